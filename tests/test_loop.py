"""The active-learning loop through Ray on digits: outputs, resume after interruption, refusal."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from osal_ray.config import DataConfig
from osal_ray.data import load_dataset
from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment import trajectory as trajectory_module
from osal_ray.experiment.state import RunState

pytestmark = pytest.mark.ray

QUIET = dict(log=lambda _: None)
# Digits 3 and 8 in the fixed training split: the denominator of recall.
KNOWN_IN_POOL = int(np.isin(load_dataset(DataConfig()).train.labels, [3, 8]).sum())


def _run(config):
    return run_experiment(prepare_experiment(config, **QUIET), **QUIET)


def test_two_rounds_on_digits_write_the_output_contract(ray_session, digits_config):
    config = digits_config(strategies=["random", "entropy", "coreset"])
    summary = _run(config)
    out = config.resolved_output_dir()

    rounds = pd.read_parquet(out / "rounds.parquet")
    assert len(rounds) == 3 * 3  # strategies x (round 0 + 2 rounds)
    for column in ["round", "strategy", "seed", "n_labeled_known", "n_invalid", "budget_spent", "accuracy", "precision", "recall"]:
        assert column in rounds.columns
    final = rounds[rounds["round"] == 2]
    assert (final["budget_spent"] == 20).all()
    assert (final["n_labeled_known"] + final["n_invalid"] == 12 + 20).all()  # 12 initial known + 20 bought
    assert rounds[rounds["round"] == 0]["precision"].isna().all()
    assert rounds["accuracy"].between(0.5, 1.0).all()

    queries = pd.read_parquet(out / "queries.parquet")
    assert len(queries) == 3 * 20
    assert set(queries.columns) >= {"id", "round", "strategy", "seed", "score", "label", "known"}
    for strategy, group in queries.groupby("strategy"):
        assert group["id"].is_unique  # never queried twice
        row = final[final["strategy"] == strategy].iloc[0]
        # precision and recall agree with the revealed labels
        assert row["precision"] == pytest.approx(group[group["round"] == 2]["known"].mean())
        known_in_pool = KNOWN_IN_POOL
        assert row["recall"] == pytest.approx((12 + group["known"].sum()) / known_in_pool, abs=1e-9)
        assert group["known"].tolist() == group["label"].isin([3, 8]).tolist()

    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["runs"]) == {"random", "entropy", "coreset"}
    assert on_disk["runs"]["entropy"]["0"]["aubc"] == pytest.approx(summary["runs"]["entropy"]["0"]["aubc"])
    assert (out / "curves.png").stat().st_size > 10_000
    assert "known_classes" in (out / "config.yaml").read_text()


def test_interrupted_run_resumes_with_identical_results(ray_session, digits_config, tmp_path, monkeypatch):
    reference = digits_config(tmp_path / "reference", strategies=["entropy"], **{"al.rounds": 2})
    _run(reference)

    interrupted = digits_config(tmp_path / "interrupted", strategies=["entropy"], **{"al.rounds": 2})
    real_train = trajectory_module._train_all

    def crash_in_round_2(ctx, state, plans, round_index):
        if round_index == 2:
            raise KeyboardInterrupt("simulated interruption during round 2's training")
        return real_train(ctx, state, plans, round_index)

    monkeypatch.setattr(trajectory_module, "_train_all", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _run(interrupted)
    state = RunState.load(tmp_path / "interrupted" / "runs" / "entropy" / "seed_0" / "state.json")
    assert state.completed_round == 1  # round 1 survived, round 2 was not half-written

    monkeypatch.setattr(trajectory_module, "_train_all", real_train)
    calls = []

    def counting(ctx, state, plans, round_index):
        calls.append(round_index)
        return real_train(ctx, state, plans, round_index)

    monkeypatch.setattr(trajectory_module, "_train_all", counting)
    _run(interrupted)
    assert calls == [2]  # rounds 0 and 1 were not redone

    a = pd.read_parquet(tmp_path / "reference" / "queries.parquet")
    b = pd.read_parquet(tmp_path / "interrupted" / "queries.parquet")
    pd.testing.assert_frame_equal(a, b)
    ra = pd.read_parquet(tmp_path / "reference" / "rounds.parquet")
    rb = pd.read_parquet(tmp_path / "interrupted" / "rounds.parquet")
    cols = ["round", "n_labeled_known", "n_invalid", "budget_spent", "accuracy", "precision", "recall"]
    pd.testing.assert_frame_equal(ra[cols], rb[cols])


def test_more_rounds_extend_a_finished_run_and_random_resumes_its_rng(ray_session, digits_config, tmp_path):
    reference = digits_config(tmp_path / "reference", strategies=["random"], **{"al.rounds": 2})
    _run(reference)
    short = digits_config(tmp_path / "extended", strategies=["random"], **{"al.rounds": 1})
    _run(short)
    _run(digits_config(tmp_path / "extended", strategies=["random"], **{"al.rounds": 2}))
    a = pd.read_parquet(tmp_path / "reference" / "queries.parquet")
    b = pd.read_parquet(tmp_path / "extended" / "queries.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_output_dir_of_another_configuration_is_refused(ray_session, digits_config, tmp_path):
    _run(digits_config(tmp_path / "o", strategies=["random"], **{"al.rounds": 1}))
    with pytest.raises(InputError) as info:
        prepare_experiment(digits_config(tmp_path / "o", strategies=["random"], **{"al.rounds": 1, "train.lr": 0.2}), **QUIET)
    assert "train.lr" in info.value.message
    # Nothing was overwritten: the old state is intact.
    state = RunState.load(tmp_path / "o" / "runs" / "random" / "seed_0" / "state.json")
    assert state.settings["train"]["lr"] == 0.05 and state.completed_round == 1


def test_a_state_saved_before_a_config_key_existed_still_resumes(ray_session, digits_config, tmp_path):
    config = digits_config(tmp_path / "o", strategies=["random"], **{"al.rounds": 1})
    _run(config)
    path = tmp_path / "o" / "runs" / "random" / "seed_0" / "state.json"
    raw = json.loads(path.read_text())
    del raw["settings"]["data"]["num_samples"]  # as an older osal_ray wrote it
    path.write_text(json.dumps(raw))
    prepare_experiment(config, **QUIET)  # accepted: the missing key is at its default
    raw["settings"]["data"]["num_classes"] = 7  # but a saved non-default value still counts
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="data.num_classes"):
        prepare_experiment(config, **QUIET)


def test_checkpoints_and_state_on_a_storage_uri(ray_session, digits_config, tmp_path, monkeypatch):
    # file:// goes through the same pyarrow filesystem calls as s3:// or gs:// would.
    store = tmp_path / "store"
    config = digits_config(tmp_path / "o", strategies=["mqnet"], storage_path=f"file://{store}",
                           strategy_params={"mqnet": {"ssl_epochs": 1, "meta_epochs": 2}}, **{"al.rounds": 2})
    _run(config)
    run = store / "runs" / "mqnet" / "seed_0"
    state = RunState.load(run / "state.json")
    assert state.completed_round == 2 and state.carry_file == "carry_round_002.npz" and (run / state.carry_file).is_file()
    assert all(path.startswith("file://") for path in state.checkpoints.values())
    assert any((store / "checkpoints").iterdir()) and not (tmp_path / "o" / "runs").exists()
    calls = []
    monkeypatch.setattr(trajectory_module, "_train_all", lambda *a: calls.append(a) or (0.0, 0.0))
    _run(digits_config(tmp_path / "o", strategies=["mqnet"], storage_path=f"file://{store}",
                       strategy_params={"mqnet": {"ssl_epochs": 1, "meta_epochs": 2}}, **{"al.rounds": 2}))
    assert calls == []  # resumed from the URI: nothing retrained


def test_corrupt_state_file_is_a_clear_error(ray_session, digits_config, tmp_path):
    path = tmp_path / "o" / "runs" / "random" / "seed_0" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    with pytest.raises(InputError, match="not a readable run state"):
        prepare_experiment(digits_config(tmp_path / "o", strategies=["random"]), **QUIET)


def test_ood_ratio_protocol_starts_with_labeled_ood(ray_session, digits_config, tmp_path):
    config = digits_config(
        tmp_path / "ood", strategies=["uncertainty"],
        **{"data.protocol": "ood_ratio", "data.ood_ratio": 0.4, "data.initial_size": 20, "al.rounds": 1},
    )
    _run(config)
    rounds = pd.read_parquet(tmp_path / "ood" / "rounds.parquet")
    first = rounds[rounds["round"] == 0].iloc[0]
    assert (first["n_labeled_known"], first["n_invalid"]) == (12, 8)
    assert math.isclose(first["recall"], 12 / KNOWN_IN_POOL)
    np.testing.assert_array_equal(rounds["budget_spent"], [0, 10])


def test_a_diverging_network_stops_the_run_with_its_name_and_round(ray_session, digits_config, tmp_path):
    from osal_ray.errors import TrainingDiverged

    config = digits_config(tmp_path / "nan", strategies=["entropy"], **{"train.lr": 1e6})
    with pytest.raises(TrainingDiverged, match=r"the classifier diverged in round 0 \(loss nan in epoch \d+\)"):
        _run(config)
    assert not (tmp_path / "nan" / "runs" / "entropy" / "seed_0" / "state.json").exists()


def test_non_finite_scores_are_refused_before_selection(ray_session, digits_config, tmp_path, monkeypatch):
    from osal_ray.errors import TrainingDiverged

    real = trajectory_module.score_pool

    def poisoned(*args, **kwargs):
        scores = real(*args, **kwargs)
        entropy = scores.columns["entropy"].copy()
        entropy[:5] = np.nan
        return type(scores)(scores.ids, {**scores.columns, "entropy": entropy})

    monkeypatch.setattr(trajectory_module, "score_pool", poisoned)
    with pytest.raises(TrainingDiverged, match=r"round 1: .*entropy \(5 samples\)"):
        _run(digits_config(tmp_path / "o", strategies=["entropy"], **{"al.rounds": 1}))
    state = RunState.load(tmp_path / "o" / "runs" / "entropy" / "seed_0" / "state.json")
    assert state.completed_round == 0 and state.pending is None


def test_other_strategies_on_the_same_directory_must_share_its_settings(ray_session, digits_config, tmp_path):
    out = tmp_path / "o"
    _run(digits_config(out, strategies=["random", "jsosal"], **{"al.rounds": 1, "al.budget": 20}))
    with pytest.raises(InputError, match=r"(random|jsosal) seed 0 run made with other shared settings.*budget \(20 -> 10\)"):
        prepare_experiment(digits_config(out, strategies=["entropy"], **{"al.rounds": 1, "al.budget": 10}), **QUIET)
    _run(digits_config(out, strategies=["entropy"], **{"al.rounds": 1, "al.budget": 20}))
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert set(rounds["strategy"]) == {"random", "jsosal", "entropy"}  # the tables hold every trajectory of the directory
    assert set(json.loads((out / "summary.json").read_text())["runs"]) == {"random", "jsosal", "entropy"}
