"""Trajectories as concurrent Ray tasks (issue 14 §1): the results of a sequential run, resumable
per trajectory, a failure that stays with its trajectory, and a readable stdout."""

from __future__ import annotations

import dataclasses

import json

import pandas as pd
import pytest
import torch

from osal_ray.config import ExperimentConfig, config_from_dict
from osal_ray.errors import InputError, TrainingDiverged
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment.concurrent import concurrency_limit, trajectory_footprint
from osal_ray.experiment.state import RunState
from osal_ray.validation import validate_config

STRATEGIES = ["entropy", "lfosa"]
SEEDS = [0, 1]
ROUND_COLUMNS = ["strategy", "seed", "round", "n_labeled_known", "n_invalid", "budget_spent", "n_queried",
                 "accuracy", "precision", "recall"]


def _config(digits_config, out, limit, rounds=2, strategies=STRATEGIES):
    return digits_config(out, strategies=strategies, seeds=SEEDS,
                         **{"al.rounds": rounds, "execution.max_concurrent_trajectories": limit})


def _run(config, lines=None):
    log = (lambda line: None) if lines is None else lines.append
    return run_experiment(prepare_experiment(config, log=log), log=log)


def _same_outputs(a, b):
    pd.testing.assert_frame_equal(pd.read_parquet(a / "queries.parquet"), pd.read_parquet(b / "queries.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(a / "rounds.parquet")[ROUND_COLUMNS],
                                  pd.read_parquet(b / "rounds.parquet")[ROUND_COLUMNS])


@pytest.fixture(scope="module")
def sequential(ray_session, tmp_path_factory):
    """The reference: the 4 trajectories one after the other in the driver (max_concurrent_trajectories: 1)."""
    from conftest import small_digits_config

    out = tmp_path_factory.mktemp("sequential") / "o"
    config = small_digits_config(out, strategies=STRATEGIES, seeds=SEEDS,
                                 **{"al.rounds": 2, "execution.max_concurrent_trajectories": 1})
    _run(config)
    return out


# --- settings -----------------------------------------------------------------------------------------------


def test_auto_runs_as_many_as_the_cluster_holds_and_never_more_than_there_are():
    config = ExperimentConfig()  # one scoring actor of 0.5 CPU + the task's 0.1; one CPU kept for the passes' tasks
    assert trajectory_footprint(config) == pytest.approx(0.6)
    assert concurrency_limit(config, 12, cluster_cpus=2) == 1  # two passes' actors would starve the repartition task
    assert concurrency_limit(config, 12, cluster_cpus=4) == 4  # reservations allow 5; in-process training's threads 4
    assert concurrency_limit(config, 12, cluster_cpus=4, torch_threads=2) == 2
    assert concurrency_limit(config, 12, cluster_cpus=2, resident=True, torch_threads=2) == 1  # measured slower, not run
    assert concurrency_limit(config, 12, cluster_cpus=2, resident=True, torch_threads=1) == 2
    assert concurrency_limit(config, 3, cluster_cpus=16) == 3
    assert concurrency_limit(config, 12, cluster_cpus=0.5) == 1
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, num_workers=2, cpus_per_worker=1.0))  # 2 CPUs
    assert concurrency_limit(config, 12, cluster_cpus=8) == 3
    config = dataclasses.replace(config, execution=dataclasses.replace(config.execution, max_concurrent_trajectories=5))
    assert concurrency_limit(config, 12, cluster_cpus=2) == 5  # a given bound is taken as given
    assert concurrency_limit(config, 2, cluster_cpus=2) == 2


@pytest.mark.parametrize("key, value", [("max_concurrent_trajectories", 0), ("cpus_per_trajectory", -0.1), ("torch_threads", 0)])
def test_execution_settings_are_validated(key, value):
    config = config_from_dict({"execution": {key: value}})
    with pytest.raises(InputError, match=f"execution.{key}"):
        validate_config(config)


def test_an_error_crosses_processes_with_its_field():
    import pickle

    error = pickle.loads(pickle.dumps(TrainingDiverged("train.lr", "the classifier diverged")))
    assert type(error) is TrainingDiverged and error.field == "train.lr" and error.message == "the classifier diverged"


# --- runs ---------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_concurrent_trajectories_give_the_sequential_results(sequential, digits_config, tmp_path):
    lines: list[str] = []
    out = tmp_path / "concurrent"
    _run(_config(digits_config, out, limit=3), lines)
    _same_outputs(sequential, out)
    assert json.loads((out / "summary.json").read_text()) == json.loads((sequential / "summary.json").read_text())
    assert "4 trajectories, at most 3 at once (execution.max_concurrent_trajectories)" in lines
    # Readable stdout: a trajectory's line carries its [strategy seed=N]; a finished round is one table row.
    labels = tuple(f"[{s} seed={seed}]" for s in STRATEGIES for seed in SEEDS)
    table = lines.index(next(line for line in lines if line.startswith("strategy ")))
    during = lines[table + 3:lines.index("", table)]
    rows = [line for line in during if not line.startswith(labels)]
    assert len(rows) == len(STRATEGIES) * len(SEEDS) * 3, during  # round 0 + 2 rounds each
    assert all(line.split()[0] in STRATEGIES and int(line.split()[1]) in SEEDS for line in rows), rows
    assert (out / "curves.png").is_file()


@pytest.mark.ray
def test_concurrent_trajectories_resume_each_after_its_last_round(sequential, digits_config, tmp_path):
    out = tmp_path / "extended"
    _run(_config(digits_config, out, limit=4, rounds=1))
    for strategy in STRATEGIES:
        for seed in SEEDS:
            assert RunState.load(out / "runs" / strategy / f"seed_{seed}" / "state.json").completed_round == 1
    _run(_config(digits_config, out, limit=2, rounds=2))
    _same_outputs(sequential, out)


@pytest.mark.ray
def test_a_failed_trajectory_fails_alone_and_is_reported(sequential, digits_config, tmp_path):
    out = tmp_path / "failing"
    _run(_config(digits_config, out, limit=4, rounds=1))
    # A real run-time failure of one trajectory: its classifier's saved weights turn NaN, so its next
    # scoring pass gives NaN scores (refused as a diverged network); the other trajectories are intact.
    state = RunState.load(out / "runs" / "entropy" / "seed_1" / "state.json")
    weights = out / "checkpoints" / state.checkpoints["classifier"].split("/checkpoints/")[-1] / "model.pt"
    payload = torch.load(weights, weights_only=True)
    payload["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, weights)

    lines: list[str] = []
    with pytest.raises(TrainingDiverged, match=r"\[entropy seed=1\] round 2: the networks' scores are NaN") as info:
        _run(_config(digits_config, out, limit=4, rounds=2), lines)
    assert info.value.field == "train.lr"  # the command line exits with code 2 and this message
    assert any(line.startswith("[entropy seed=1] failed: train.lr:") for line in lines), lines
    assert "1 of 4 trajectories failed (summary.json 'failed'):" in lines

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["failed"]) == ["entropy/1"] and "NaN" in summary["failed"]["entropy/1"]
    rounds = pd.read_parquet(out / "rounds.parquet")
    last = rounds.groupby(["strategy", "seed"])["round"].max().to_dict()
    assert last == {("entropy", 0): 2, ("entropy", 1): 1, ("lfosa", 0): 2, ("lfosa", 1): 2}
    finished = rounds[rounds["strategy"] != "entropy"]
    reference = pd.read_parquet(sequential / "rounds.parquet")
    pd.testing.assert_frame_equal(finished[ROUND_COLUMNS].reset_index(drop=True),
                                  reference[reference["strategy"] != "entropy"][ROUND_COLUMNS].reset_index(drop=True))
    assert RunState.load(out / "runs" / "entropy" / "seed_1" / "state.json").completed_round == 1  # kept at its last good round


@pytest.mark.ray
def test_a_trajectory_keeps_the_torch_threads_it_started_with(ray_session, digits_config, tmp_path):
    """New runs record execution.torch_threads (default 1); a run saved before the count was recorded
    resumes with torch's default, as it ran then, whatever the config now says."""
    from osal_ray.experiment.runner import default_torch_threads

    default = default_torch_threads()
    out = tmp_path / "out"
    quiet = dict(log=lambda _: None)
    config = digits_config(out, strategies=["entropy"], **{"al.rounds": 1, "execution.max_concurrent_trajectories": 1})
    assert config.execution.torch_threads == 1
    try:
        run_experiment(prepare_experiment(config, **quiet), **quiet)
        path = out / "runs" / "entropy" / "seed_0" / "state.json"
        saved = json.loads(path.read_text())
        assert saved["torch_threads"] == 1
        del saved["torch_threads"]  # as an older osal_ray wrote it
        path.write_text(json.dumps(saved))
        longer = digits_config(out, strategies=["entropy"], **{"al.rounds": 2, "execution.max_concurrent_trajectories": 1})
        run_experiment(prepare_experiment(longer, **quiet), **quiet)
        assert torch.get_num_threads() == default  # the trajectory ran its second round on torch's default
        assert json.loads(path.read_text())["torch_threads"] is None  # and keeps saying so
    finally:
        torch.set_num_threads(default)
