"""Config loading, overrides and validation; the command line's exit code 2 before Ray starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from osal_ray.config import ExperimentConfig, config_from_dict, load_config
from osal_ray.errors import InputError
from osal_ray.experiment.runner import prepare_experiment
from osal_ray.validation import validate_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_documented_default_job():
    config = load_config(None)
    assert config == load_config(REPO / "jobs" / "digits.yaml")
    assert config.data.dataset == "digits"
    validate_config(config)


def test_every_job_file_loads_and_validates():
    from osal_ray.sweep import is_sweep, validate_sweep

    paths = sorted((REPO / "jobs").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        config = load_config(path)
        validate_config(config)
        if is_sweep(config):
            validate_sweep(config)
        header = path.read_text().split("\n")[0]
        assert header.startswith("#"), f"{path.name} needs a header saying what it reproduces and its run time"
        assert "run time" in path.read_text().split("name:")[0].lower(), f"{path.name}: give the expected run time"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nal:\n  rounds: 3\ndata:\n  known_classes: [1, 2]\n")
    config = load_config(path, ["al.budget=7", "strategies=[random, margin]", "train.lr=0.1", "data.root=null"])
    assert (config.name, config.al.rounds, config.al.budget) == ("x", 3, 7)
    assert config.strategies == ["random", "margin"]
    assert config.train.lr == 0.1 and config.data.known_classes == [1, 2]


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"al": {"roundz": 3}}, "al.roundz"),
        ({"al": {"rounds": "three"}}, "al.rounds"),
        ({"train": {"lr": True}}, "train.lr"),
        ({"seeds": 0}, "seeds"),
        ({"data": "digits"}, "data"),
        ({"data": {"known_classes": 2.5}}, "data.known_classes"),
    ],
)
def test_shape_errors_name_the_field(raw, field):
    with pytest.raises(InputError) as info:
        config_from_dict(raw)
    assert info.value.field == field


def test_malformed_yaml_and_set(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("al:\n  rounds: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(InputError, match="--set"):
        load_config(None, ["al.rounds"])
    with pytest.raises(InputError, match="--set"):
        load_config(None, ["al..rounds=2"])
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["data.dataset=imagenet"], "data.dataset"),
        (["strategies=[random, jsosall]"], "strategies"),
        (["model.classifier=vit"], "model.classifier"),
        (["data.mismatch_ratio=1.0"], "data.mismatch_ratio"),
        (["data.mismatch_ratio=0"], "data.mismatch_ratio"),
        (["data.ood_ratio=1.0"], "data.ood_ratio"),
        (["data.ood_ratio=-0.1"], "data.ood_ratio"),
        (["data.known_classes=1"], "data.known_classes"),
        (["data.protocol=closed"], "data.protocol"),
        (["train.epochs=0"], "train.epochs"),
        (["scoring.cpus_per_actor=0"], "scoring.cpus_per_actor"),
        (["scoring.parquet_reader=v3"], "scoring.parquet_reader"),
        (["strategy_params.entropy.alpha=2"], "strategy_params.entropy.alpha"),
        (["seeds=[1, 1]"], "seeds"),
    ],
)
def test_meaning_errors_name_the_field(overrides, field):
    from osal_ray.experiment.preflight import check_config

    with pytest.raises(InputError) as info:
        check_config(load_config(None, overrides))  # the config's values, then the strategies' plans
    assert info.value.field == field


def test_budget_larger_than_the_pool(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "al.budget=400", "al.rounds=4"])
    with pytest.raises(InputError) as info:
        prepare_experiment(config, log=lambda _: None)
    assert info.value.field == "al.budget" and "1600" in info.value.message


def test_missing_data_root(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "data.dataset=fashion_mnist", f"data.root={tmp_path}/absent"])
    with pytest.raises(InputError) as info:
        prepare_experiment(config, log=lambda _: None)
    assert info.value.field == "data.root"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "data.dataset=imagenet"], "data.dataset"),
        (["--set", "data.mismatch_ratio=1.5"], "data.mismatch_ratio"),
        (["--set", "al.budget=5000"], "al.budget"),
        (["--set", "norounds"], "--set"),
        (["--config", "no/such/job.yaml"], "--config"),
    ],
)
def test_command_line_exits_2_before_ray(tmp_path, args, needle):
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "osal_ray.run", "--output-dir", str(tmp_path / "o"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr.replace("osal_ray", "")
    assert time.perf_counter() - started < 60


def test_config_dump_round_trips():
    import yaml

    from osal_ray.config import dump_config

    config = load_config(None, ["strategy_params.coreset.chunk_size=128", "data.known_classes=[3, 8]"])
    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config
    assert isinstance(again, ExperimentConfig)


def test_readme_documents_every_config_key():
    import dataclasses

    readme = (REPO / "README.md").read_text()

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                yield from keys(getattr(ExperimentConfig(), f.name).__class__, f"{f.name}.")
            else:
                yield prefix + f.name

    missing = [k for k in keys(ExperimentConfig) if f"`{k}`" not in readme]
    assert not missing, f"README configuration reference lacks {missing}"


def _strategy_parameter_rows(readme: str) -> list[tuple[str, set[str], str]]:
    """(parameter, strategies, default cell) of every row of the README's strategy-parameter table."""
    header = "| parameter | strategies | default | meaning |"
    assert header in readme, "README lacks the strategy-parameter table"
    rows = []
    for line in readme[readme.index(header):].split("\n")[2:]:
        if not line.startswith("| `"):
            break
        name, strategies, default = (cell.strip() for cell in line.strip("|").split(" | ")[:3])
        rows.append((name.strip("`"), {s.strip() for s in strategies.split(",")}, default.strip("`")))
    return rows


def _same_default(cell: str, value) -> bool:
    parsed = yaml.safe_load(cell)
    if isinstance(value, float) and isinstance(parsed, (str, int)) and not isinstance(parsed, bool):
        parsed = float(parsed)  # YAML 1.1 reads 1e-06 as a string
    return parsed == value


def test_readme_documents_every_strategy_parameter_with_its_default():
    from osal_ray.strategies import STRATEGIES, get_strategy

    rows = _strategy_parameter_rows((REPO / "README.md").read_text())
    problems = []
    for name in STRATEGIES.names():
        for parameter, default in get_strategy(name).defaults.items():
            matching = [cell for p, strategies, cell in rows if p == parameter and name in strategies]
            if len(matching) != 1:
                problems.append(f"{name}.{parameter}: {len(matching)} rows")
            elif not _same_default(matching[0], default):
                problems.append(f"{name}.{parameter}: README default {matching[0]!r}, code {default!r}")
    for parameter, strategies, _ in rows:
        problems += [f"{s}.{parameter}: documented but not a parameter" for s in strategies
                     if s not in STRATEGIES or parameter not in get_strategy(s).defaults]
    assert not problems, problems


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
                                                          for p, c in zip("abcdefgh", "bcdefghi")])


@pytest.mark.parametrize("where", ["name", "data.known_classes", "model.kwargs"])
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys, where):
    from osal_ray.run import main

    section, _, key = where.rpartition(".")
    body = BOMB.replace("\n", "\n  ") if section else BOMB
    job = tmp_path / "bomb.yaml"
    job.write_text((f"{section}:\n  {key}:\n    " if section else f"{key}:\n  ") + body.replace("\n", "\n  "))
    started = time.perf_counter()
    assert main(["--config", str(job), "--output-dir", str(tmp_path / "o")]) == 2
    assert main(["--set", f"{where}={{{BOMB.replace(chr(10), ', ')}}}", "--output-dir", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - started < 1.0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("aliases" in line and len(line) < 600 for line in lines), lines
    assert not (tmp_path / "o").exists()


def test_a_huge_value_is_cut_short_in_the_error(capsys):
    with pytest.raises(InputError) as info:
        load_config(None, [f"al.rounds=[{', '.join(['1'] * 100_000)}]"])
    assert len(str(info.value)) < 400 and "..." in str(info.value)
