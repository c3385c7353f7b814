"""train.keep_checkpoints: ``last`` keeps only what a resume needs (each network's latest run), ``all`` every round's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from osal_ray.config import config_from_dict
from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment import trajectory as trajectory_module
from osal_ray.experiment.state import RunState
from osal_ray.training.checkpoints import prune_checkpoints
from osal_ray.validation import validate_config

QUIET = dict(log=lambda _: None)


def _run(config):
    return run_experiment(prepare_experiment(config, **QUIET), **QUIET)


def _runs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _per_network(names: list[str]) -> Counter:
    """How many runs each (strategy, seed, network) has: names are <strategy>-seed<N>-round<RRR>-<network>-<digest>."""
    return Counter((parts[0], parts[1], parts[3]) for parts in (name.split("-") for name in names))


def _fake_run(root: Path, name: str, checkpoint: str = "checkpoint") -> str:
    folder = root / name / checkpoint
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (root / name / "checkpoint_manager_snapshot.json").write_text("{}")
    return str(folder)


# --- the pruning function, on fake run directories -------------------------------------------------------------


def _layout(root: Path) -> dict[str, str]:
    """Three rounds of a classifier, a once-trained encoder, and runs of other trajectories."""
    names = [
        "mqnet-seed0-round000-classifier-aaa", "mqnet-seed0-round001-classifier-bbb", "mqnet-seed0-round002-classifier-ccc",
        "mqnet-seed0-round000-ssl-ddd",
        "mqnet-seed1-round000-classifier-eee", "mqnet-seed10-round000-classifier-fff", "entropy-seed0-round000-classifier-ggg",
    ]
    paths = {name: _fake_run(root, name, "checkpoint_2026-01-01_00-00-00.000000" if "bbb" in name else "checkpoint")
             for name in names}
    (root / "mqnet-seed0-round-a-file").write_text("not a run")
    return paths


def test_prune_keeps_the_states_checkpoints_and_other_trajectories(tmp_path):
    root = tmp_path / "checkpoints"
    paths = _layout(root)
    keep = {paths["mqnet-seed0-round002-classifier-ccc"], paths["mqnet-seed0-round000-ssl-ddd"]}
    deleted = prune_checkpoints(root, keep, "mqnet-seed0-round")
    assert deleted == ["mqnet-seed0-round000-classifier-aaa", "mqnet-seed0-round001-classifier-bbb"]
    assert _runs(root) == sorted([
        "mqnet-seed0-round002-classifier-ccc", "mqnet-seed0-round000-ssl-ddd",  # the state's, the frozen encoder's round 0
        "mqnet-seed1-round000-classifier-eee", "mqnet-seed10-round000-classifier-fff", "entropy-seed0-round000-classifier-ggg",
        "mqnet-seed0-round-a-file",  # only directories are runs
    ])
    assert (root / "mqnet-seed0-round002-classifier-ccc" / "checkpoint" / "model.pt").is_file()
    assert prune_checkpoints(root, keep, "mqnet-seed0-round") == []  # nothing left to do
    with pytest.raises(ValueError):
        prune_checkpoints(root, keep, "")  # never "every run"


def test_prune_on_a_uri_and_its_staging_folder(tmp_path):
    # file:// goes through the same pyarrow filesystem calls as s3:// or gs:// would.
    root = tmp_path / "store" / "checkpoints"
    paths = _layout(root)
    staging = tmp_path / "staging"
    for name in ("mqnet-seed0-round001-classifier-bbb", "mqnet-seed0-round002-classifier-ccc", "mqnet-seed1-round000-classifier-eee"):
        _fake_run(staging, name)
    uri = f"file://{root}"
    keep = {f"file://{paths[name]}" for name in ("mqnet-seed0-round002-classifier-ccc", "mqnet-seed0-round000-ssl-ddd")}
    deleted = prune_checkpoints(uri, keep, "mqnet-seed0-round", staging=staging)
    assert deleted == ["mqnet-seed0-round000-classifier-aaa", "mqnet-seed0-round001-classifier-bbb"]
    assert "mqnet-seed0-round002-classifier-ccc" in _runs(root) and "mqnet-seed0-round000-ssl-ddd" in _runs(root)
    # Staged copies were uploaded before the state referred to them: none of this trajectory's is needed.
    assert _runs(staging) == ["mqnet-seed1-round000-classifier-eee"]


def test_prune_deletes_nothing_when_a_kept_checkpoint_lies_elsewhere(tmp_path):
    root = tmp_path / "checkpoints"
    paths = _layout(root)
    said = []
    keep = {paths["mqnet-seed0-round002-classifier-ccc"], str(tmp_path / "moved" / "mqnet-seed0-round000-ssl-ddd" / "checkpoint")}
    assert prune_checkpoints(root, keep, "mqnet-seed0-round", log=said.append) == []
    assert len(_runs(root)) == 8 and "not under" in said[0]


def test_a_failed_deletion_is_reported_and_left_for_later(tmp_path, monkeypatch):
    from osal_ray import storage

    root = tmp_path / "checkpoints"
    paths = _layout(root)

    class Refusing:
        """The local filesystem, but deleting fails (as a permission error or a flaky object store would)."""

        def __init__(self, filesystem):
            self.filesystem = filesystem

        def __getattr__(self, name):
            return getattr(self.filesystem, name)

        def delete_dir(self, path):
            raise OSError("permission denied")

    real_resolve = storage.resolve
    monkeypatch.setattr(storage, "resolve", lambda location: (Refusing(real_resolve(location)[0]), real_resolve(location)[1]))
    said = []
    assert prune_checkpoints(root, {paths["mqnet-seed0-round002-classifier-ccc"]}, "mqnet-seed0-round", log=said.append) == []
    assert len(said) == 3 and all("could not delete" in line for line in said)
    assert len(_runs(root)) == 8


# --- the config key ---------------------------------------------------------------------------------------------


def test_keep_checkpoints_is_validated():
    assert config_from_dict({}).train.keep_checkpoints == "last"
    with pytest.raises(InputError, match="train.keep_checkpoints.*'latest' is not one of last, all"):
        validate_config(config_from_dict({"train": {"keep_checkpoints": "latest"}}))
    validate_config(config_from_dict({"train": {"keep_checkpoints": "all"}}))


# --- whole runs -------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_last_keeps_one_run_per_network_and_resumes_like_all(ray_session, digits_config, tmp_path, monkeypatch):
    strategies = ["random", "lfosa"]  # lfosa trains a classifier and a detector each round
    reference = digits_config(tmp_path / "all", strategies=strategies, **{"al.rounds": 3, "train.keep_checkpoints": "all"})
    _run(reference)
    every = _per_network(_runs(tmp_path / "all" / "checkpoints"))
    assert every == {("random", "seed0", "classifier"): 4, ("lfosa", "seed0", "classifier"): 4, ("lfosa", "seed0", "detector"): 4}

    short = digits_config(tmp_path / "last", strategies=strategies, **{"al.rounds": 2})
    _run(short)
    folder = tmp_path / "last" / "checkpoints"
    assert _per_network(_runs(folder)) == {key: 1 for key in every}
    for strategy in strategies:
        state = RunState.load(tmp_path / "last" / "runs" / strategy / "seed_0" / "state.json")
        assert state.completed_round == 2
        assert {Path(path).parent.name for path in state.checkpoints.values()} == {
            name for name in _runs(folder) if name.startswith(f"{strategy}-")}
        assert all("-round002-" in path for path in state.checkpoints.values())

    # keep_checkpoints is no part of what a resume compares: switching it is accepted.
    switched = prepare_experiment(digits_config(tmp_path / "last", strategies=strategies,
                                                **{"al.rounds": 2, "train.keep_checkpoints": "all"}), **QUIET)
    switched.lock.release()

    calls = []
    real_train, real_prune = trajectory_module._train_all, trajectory_module.prune_checkpoints

    def counting(ctx, state, specs, round_index):
        calls.append((ctx.plan.name, round_index))
        return real_train(ctx, state, specs, round_index)

    def after_the_save(root, keep, prefix, **kwargs):
        # Deleting starts only once the state on disk refers to nothing else: a crash here leaves it resumable.
        strategy = prefix.split("-seed")[0]
        saved = RunState.load(tmp_path / "last" / "runs" / strategy / "seed_0" / "state.json")
        assert saved.completed_round == 3 and set(saved.checkpoints.values()) == set(keep)
        return real_prune(root, keep, prefix, **kwargs)

    monkeypatch.setattr(trajectory_module, "_train_all", counting)
    monkeypatch.setattr(trajectory_module, "prune_checkpoints", after_the_save)
    # In the driver (max_concurrent_trajectories: 1), where the patched functions are.
    _run(digits_config(tmp_path / "last", strategies=strategies, **{"al.rounds": 3, "execution.max_concurrent_trajectories": 1}))
    assert calls == [("random", 3), ("lfosa", 3)]  # continued from the kept checkpoints; nothing redone
    names = _runs(folder)
    assert _per_network(names) == {key: 1 for key in every} and all("-round003-" in name for name in names)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all" / "queries.parquet"),
                                  pd.read_parquet(tmp_path / "last" / "queries.parquet"))
    cols = ["strategy", "round", "n_labeled_known", "n_invalid", "budget_spent", "accuracy", "precision", "recall"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all" / "rounds.parquet")[cols],
                                  pd.read_parquet(tmp_path / "last" / "rounds.parquet")[cols])


@pytest.mark.ray
def test_last_keeps_the_once_trained_encoder_on_a_storage_uri(ray_session, digits_config, tmp_path):
    store = tmp_path / "store"
    config = digits_config(tmp_path / "o", strategies=["mqnet"], storage_path=f"file://{store}",
                           strategy_params={"mqnet": {"ssl_epochs": 1, "meta_epochs": 2}}, **{"al.rounds": 2})
    _run(config)
    names = _runs(store / "checkpoints")
    assert len(names) == 2
    assert [name for name in names if "-ssl-" in name][0].startswith("mqnet-seed0-round000-ssl-")  # trained in round 0, kept
    assert [name for name in names if "-classifier-" in name][0].startswith("mqnet-seed0-round002-classifier-")
    state = RunState.load(store / "runs" / "mqnet" / "seed_0" / "state.json")
    assert {path.split("/")[-2] for path in state.checkpoints.values()} == set(names)
    assert _runs(tmp_path / "o" / "staging") == []  # the in-process runs' staged copies went after their upload
