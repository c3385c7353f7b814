"""Config loading, overrides and validation; the command line's exit code 2 before Ray starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    with pytest.raises(InputError) as info:
        validate_config(load_config(None, overrides))
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
