"""Ray Tune sweeps: validation before Ray, a grid sweep and its resume, a model-based (Optuna) sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from osal_ray.config import load_config
from osal_ray.errors import InputError
from osal_ray.sweep import apply_values, trial_key, validate_sweep

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "sweep_digits_jsosal.yaml"


def _config(tmp_path, *overrides):
    return load_config(JOB, [f"output_dir={tmp_path / 'sweep'}", "al.rounds=1", "train.epochs=10", *overrides])


@pytest.mark.parametrize(
    "override, field",
    [
        ("sweep.space={data.nope: {grid: [1]}}", "sweep.space.data.nope"),
        ("sweep.space={data.ood_ratio: {grid: [0.2, 1.5]}}", "sweep.space.data.ood_ratio"),
        ("sweep.space={train.lr: {loguniform: [0, 1]}}", "sweep.space.train.lr"),
        ("sweep.space={train.lr: {between: [0.1, 1]}}", "sweep.space.train.lr"),
        ("sweep.space={strategy: {choice: [jsosal, nope]}}", "sweep.space.strategy"),
        ("sweep.searcher=bayes", "sweep.searcher"),
        ("sweep.metric=loss", "sweep.metric"),
        ("sweep.metric_strategy=lfosa", "sweep.metric_strategy"),
        (("sweep.space={strategy: {grid: [jsosal, lfosa]}}", "sweep.metric_strategy=jsosal"), "sweep.metric_strategy"),
    ],
)
def test_bad_sweeps_name_the_field(tmp_path, override, field):
    with pytest.raises(InputError) as info:
        validate_sweep(_config(tmp_path, *(override if isinstance(override, tuple) else (override,))))
    assert info.value.field == field


@pytest.mark.parametrize(
    "overrides, field, needle",
    [
        (["data.known_classes=[three, nope]"], "data.known_classes", "nope"),
        (["sweep.space={al.budget: {grid: [10, 5000]}}"], "sweep.space.al.budget", "5000"),
        (["sweep.space={data.known_classes: {grid: [[three, eight], [three, nope]]}}"], "sweep.space.data.known_classes", "nope"),
    ],
)
def test_data_and_budget_of_every_swept_value_are_checked_before_ray(tmp_path, overrides, field, needle):
    from osal_ray.sweep import check_sweep

    with pytest.raises(InputError) as info:
        check_sweep(_config(tmp_path, *overrides))
    assert info.value.field == field and needle in info.value.message


def test_a_sweep_resumes_only_with_the_search_it_started_with(tmp_path):
    from osal_ray import storage
    from osal_ray.sweep import _definition_location, _sweep_definition, check_sweep_resume

    started = _config(tmp_path)
    storage.write_bytes(_definition_location(started), json.dumps(_sweep_definition(started)).encode())
    check_sweep_resume(_config(tmp_path, "al.rounds=2"))  # the base config may change; unfinished trials pick it up
    with pytest.raises(InputError, match="sweep.space.detector.temperature"):
        check_sweep_resume(_config(tmp_path, "sweep.space={detector.temperature: {grid: [0.5, 1.0]}}"))
    with pytest.raises(InputError, match="sweep.num_samples"):
        check_sweep_resume(_config(tmp_path, "sweep.num_samples=3"))


def test_trials_get_absolute_paths(tmp_path, monkeypatch):
    from osal_ray.sweep import _absolute_paths

    monkeypatch.chdir(tmp_path)
    raw = _config(tmp_path, "storage_path=store", "data.root=data", "clip.pretrained=openai").to_dict()
    fixed = _absolute_paths(raw)
    assert fixed["storage_path"] == str(tmp_path / "store") and fixed["data"]["root"] == str(tmp_path / "data")
    assert fixed["clip"]["pretrained"] == "openai"  # a tag, not a file
    assert _absolute_paths({**raw, "storage_path": "s3://bucket/x"})["storage_path"] == "s3://bucket/x"


def test_optuna_refuses_grid_entries(tmp_path):
    with pytest.raises(InputError, match="choice instead of grid"):
        validate_sweep(_config(tmp_path, "sweep.searcher=optuna"))


def test_command_line_refuses_a_bad_sweep_before_ray(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "osal_ray.run", "--config", str(JOB), "--output-dir", str(tmp_path / "o"),
         "--set", "sweep.space={data.mismatch_ratio: {grid: [0.2, 1.2]}}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "sweep.space.data.mismatch_ratio" in proc.stderr
    assert "Started a local Ray" not in proc.stderr + proc.stdout


def test_trial_values_and_keys():
    raw = load_config(JOB).to_dict()
    variant = apply_values(raw, {"detector.temperature": 0.25, "seed": 3, "strategy": "lfosa"})
    assert variant["detector"]["temperature"] == 0.25 and variant["seeds"] == [3] and variant["strategies"] == ["lfosa"]
    assert raw["detector"]["temperature"] == 0.5  # the base is not modified
    assert trial_key({"a": 1, "b": 2}) == trial_key({"b": 2, "a": 1})


@pytest.mark.ray
@pytest.mark.slow
def test_grid_sweep_runs_trials_writes_outputs_and_resumes(ray_session, tmp_path):
    from osal_ray.sweep import run_sweep

    config = _config(tmp_path, "sweep.space={detector.temperature: {grid: [0.5, 2.0]}}")
    table = run_sweep(config, log=lambda _: None)
    assert len(table) == 2 and (table["status"] == "ok").all()
    assert sorted(table["detector.temperature"]) == [0.5, 2.0]
    out = tmp_path / "sweep"
    on_disk = pd.read_parquet(out / "sweep" / "trials.parquet")
    assert len(on_disk) == 2 and (out / "sweep" / "trials.csv").is_file() and (out / "sweep" / "objective.png").is_file()
    for _, row in table.iterrows():
        summary = json.loads((out / "trials" / row["trial_key"] / "summary.json").read_text())
        assert row["objective"] == pytest.approx(summary["mean"]["jsosal"]["aubc"])  # the trial's own outputs
        assert (out / "trials" / row["trial_key"] / "rounds.parquet").is_file()
    best = yaml.safe_load((out / "sweep" / "best_config.yaml").read_text())
    assert best["detector"]["temperature"] == table.iloc[0]["detector.temperature"] and best["sweep"]["space"] == {}

    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("state.json")}
    again = run_sweep(config, log=lambda _: None)  # the same command: restores, nothing is re-run
    assert sorted(again["objective"]) == sorted(table["objective"])
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("state.json")} == stamps


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_over_frozen_feature_recipes(ray_session, tmp_path):
    """Each trial extracts its own recipe's features (its own store key) and trains heads on them."""
    from osal_ray.sweep import run_sweep

    config = _config(tmp_path, "model.classifier=linear", "features.extractor=pixels",
                     "sweep.space={features.params.components: {grid: [4, 16]}}")
    table = run_sweep(config, log=lambda _: None)
    assert len(table) == 2 and (table["status"] == "ok").all()
    out = tmp_path / "sweep" / "trials"
    dims = set()
    for key in table["trial_key"]:
        (augmented,) = [p for p in (out / key / "data").iterdir() if "-features-" in p.name]
        dims.add(json.loads((augmented / "manifest.json").read_text())["vector_columns"]["features"])
    assert dims == {4, 16}


@pytest.mark.ray
@pytest.mark.slow
def test_optuna_sweep_samples_the_space(ray_session, tmp_path):
    from osal_ray.sweep import run_sweep

    config = _config(
        tmp_path, "sweep.searcher=optuna", "sweep.num_samples=2", "sweep.metric=final_recall",
        "sweep.space={strategy_params.jsosal.a_multiple: {uniform: [1.0, 3.0]}, al.budget: {choice: [10, 20]}}",
    )
    table = run_sweep(config, log=lambda _: None)
    assert len(table) == 2 and (table["status"] == "ok").all()
    assert table["strategy_params.jsosal.a_multiple"].between(1.0, 3.0).all()
    assert (table["objective"] == table["final_recall"]).all()


@pytest.mark.ray
@pytest.mark.slow
def test_trials_report_every_round_and_asha_stops_weak_ones_early(ray_session, tmp_path):
    """Learning rates from useless to good: each trial reports after every round, and ASHA (grace period
    one report, halving) stops the trials whose running AUBC trails after the first rounds."""
    from osal_ray.sweep import run_sweep

    config = _config(tmp_path, "al.rounds=3", "strategies=[random]", "sweep.scheduler=asha", "sweep.grace_period=1",
                     "sweep.reduction_factor=2", "sweep.max_concurrent_trials=1",
                     "sweep.space={train.lr: {grid: [0.05, 0.0001, 0.00001, 0.000001]}}")
    table = run_sweep(config, log=lambda _: None)
    assert set(table["status"]) <= {"ok", "stopped early"} and (table["status"] == "stopped early").any()
    assert table.loc[table["status"] == "ok", "train.lr"].max() == 0.05  # the good one ran to the end
    progress = sorted((tmp_path / "sweep").rglob("progress.csv"))
    assert progress and max(len(pd.read_csv(p)) for p in progress) == 5  # round 0 + 3 rounds, then the final result


def test_an_unknown_scheduler_is_refused(tmp_path):
    with pytest.raises(InputError, match="sweep.scheduler"):
        validate_sweep(_config(tmp_path, "sweep.scheduler=hyperband"))
