"""LfOSA and JSOSAL selection on hand-made MAVs and probabilities, their edge cases, the detector plan,
and a two-round JSOSAL run through Ray."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from osal_ray.errors import InputError
from osal_ray.strategies import PoolScores, get_strategy, query
from osal_ray.strategies.mixtures import (
    BGMM_DEFAULT_OPTIONS,
    LFOSA_GMM_OPTIONS,
    MixtureSettings,
    fit_class,
    is_collapsed,
    known_probability,
)

K = 2


def _clusters(n_per_cluster: int = 60, seed: int = 0, unknown_predicted: int = 10):
    """Per known class: a high-MAV cluster (known) at 8 and a low one (unknown) at 2; plus some predicted K."""
    rng = np.random.default_rng(seed)
    pred, mav, truth_known = [], [], []
    for c in range(K):
        for centre, known in ((8.0, True), (2.0, False)):
            pred += [c] * n_per_cluster
            mav += list(rng.normal(centre, 0.3, n_per_cluster))
            truth_known += [known] * n_per_cluster
    pred += [K] * unknown_predicted
    mav += list(rng.normal(9.0, 0.3, unknown_predicted))  # confident unknowns: high MAV on class K
    truth_known += [False] * unknown_predicted
    n = len(pred)
    margin = np.where(np.array(pred) == K, -np.linspace(1, 3, n), 1.0)
    return np.array(pred), np.array(mav, dtype=np.float32), np.array(truth_known), margin.astype(np.float32)


def _pool(pred, mav, margin, entropy=None) -> PoolScores:
    columns = {"det_pred": pred, "det_mav": mav, "det_known_margin": margin}
    if entropy is not None:
        columns["entropy"] = entropy
    return PoolScores(np.arange(len(pred)) + 100, columns)


@pytest.mark.parametrize("name", ["lfosa", "jsosal_no_entropy"])
def test_queries_come_from_the_high_mav_cluster(name):
    pred, mav, truth, margin = _clusters()
    selection = query(name, _pool(pred, mav, margin), 40, num_known=K, seed=1)
    assert len(selection.indices) == 40
    assert truth[selection.indices].all()  # every query is a high-cluster (known) sample
    assert (pred[selection.indices] < K).all()  # never a predicted-unknown sample
    prob = selection.diagnostics["known_probability"]
    assert prob[truth].min() > 0.99 and prob[(~truth) & (pred < K)].max() < 0.01
    assert (prob[pred == K] == 0).all()
    assert selection.values["classes_fitted"] == K and selection.values["n_filled"] == 0


def test_jsosal_takes_the_most_uncertain_of_the_top_a():
    pred, mav, truth, margin = _clusters()
    entropy = np.linspace(0.0, 1.0, len(pred))[::-1].copy()  # low-MAV samples of class 0 are the most uncertain
    rng = np.random.default_rng(5)
    entropy[truth] = rng.uniform(0.0, 0.3, truth.sum())
    entropy[np.flatnonzero(truth)[:5]] = [0.9, 0.91, 0.92, 0.93, 0.94]  # five uncertain known samples
    selection = query("jsosal", _pool(pred, mav, margin, entropy), 5, num_known=K, params={"a": 120})
    assert sorted(selection.indices.tolist()) == np.flatnonzero(truth)[:5].tolist()
    # Without the purity step, entropy alone would pick unknowns: they are more uncertain still.
    assert np.argsort(-entropy)[:5].tolist() != sorted(selection.indices.tolist())
    top_a = selection.diagnostics["top_a"]
    assert top_a.sum() == 120 and truth[top_a].all()
    np.testing.assert_allclose(selection.scores, [0.94, 0.93, 0.92, 0.91, 0.9])


def test_jsosal_a_as_count_or_multiple_and_never_below_b():
    pred, mav, _, margin = _clusters()
    entropy = np.random.default_rng(0).random(len(pred))
    pool = _pool(pred, mav, margin, entropy)
    assert query("jsosal", pool, 10, num_known=K, params={"a_multiple": 3.0}).values["a"] == 30
    assert query("jsosal", pool, 10, num_known=K, params={"a": 25}).values["a"] == 25
    assert query("jsosal", pool, 10, num_known=K, params={"a": 4}).values["a"] == 10  # a < b is raised to b
    same = query("jsosal", pool, 10, num_known=K, params={"a": 10})
    plain = query("jsosal_no_entropy", pool, 10, num_known=K)
    assert sorted(same.indices.tolist()) == sorted(plain.indices.tolist())  # a == b: the entropy step has no choice


def test_a_class_with_one_sample_gets_the_uninformative_probability():
    pred, mav, _, margin = _clusters()
    pred = np.where(pred == K, 3, pred)  # with 3 known classes, "unknown" is class 3
    pred = np.concatenate([pred, [2]])  # the third known class, predicted once
    mav = np.concatenate([mav, [7.0]]).astype(np.float32)
    margin = np.concatenate([margin, [1.0]]).astype(np.float32)
    selection = query("lfosa", _pool(pred, mav, margin), 5, num_known=3)
    assert selection.diagnostics["known_probability"][-1] == 0.5
    assert selection.values["classes_too_small"] == 1
    assert fit_class(np.array([3.0]), MixtureSettings("gmm", LFOSA_GMM_OPTIONS), 0).status == "too_small"


def test_collapsed_mixtures_give_the_uninformative_probability():
    settings = MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS)
    constant = fit_class(np.full(50, 4.2), settings, 0)
    assert constant.status == "collapsed" and (constant.probability == 0.5).all()
    # One outlier among 2,000 points: the second component holds 1/2000 of the weight.
    values = np.concatenate([np.random.default_rng(1).normal(5.0, 1.0, 2000), [60.0]])
    outlier = fit_class(values, MixtureSettings("gmm", LFOSA_GMM_OPTIONS), 0)
    assert outlier.status == "collapsed" and (outlier.probability == 0.5).all()
    kept = fit_class(values, MixtureSettings("gmm", LFOSA_GMM_OPTIONS, collapse_weight=0.0), 0)
    assert kept.status == "fitted"
    # Two components that do not separate (Ashman's D < 2) with a tiny weight: collapsed.
    assert is_collapsed(np.array([0.995, 0.005]), np.array([5.0, 5.5]), np.array([1.0, 1.0]), 2000, 1.0,
                        MixtureSettings("gmm")) is True


@pytest.mark.parametrize("kind", ["gmm", "bgmm"])
def test_a_small_but_separated_known_tail_is_kept(kind):
    """1,990 low-MAV samples and 8 clear knowns: weights about [0.996, 0.004]. The reference queries all 8;
    a collapse rule on weight alone set the whole class to 0.5 and queried none of them."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(2.0, 0.5, 1990), rng.normal(8.2, 0.3, 8)])
    options = LFOSA_GMM_OPTIONS if kind == "gmm" else BGMM_DEFAULT_OPTIONS
    fit = fit_class(values, MixtureSettings(kind, options), 0)
    assert fit.status == "fitted"
    assert fit.probability[-8:].min() > 0.9 and fit.probability[:1990].max() < 0.5
    pred = np.zeros(len(values), dtype=np.int64)
    name = "lfosa" if kind == "gmm" else "jsosal_no_entropy"
    selection = query(name, _pool(pred, values.astype(np.float32), np.ones(len(values), np.float32)), 8, num_known=2)
    assert sorted(selection.indices.tolist()) == list(range(1990, 1998))


def test_fewer_candidates_than_budget_fills_from_the_rejected_by_margin():
    pred = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    mav = np.array([8, 7.9, 2, 8, 2.1, 9, 9, 9, 9], dtype=np.float32)
    margin = np.array([1, 1, 1, 1, 1, -0.5, -3.0, -0.1, -2.0], dtype=np.float32)
    selection = query("lfosa", _pool(pred, mav, margin), 7, num_known=2)
    assert len(selection.indices) == 7
    assert sorted(selection.indices[:5].tolist()) == [0, 1, 2, 3, 4]  # every candidate first
    assert selection.indices[5:].tolist() == [7, 5]  # then the rejected with the largest margins
    assert np.isnan(selection.scores[5:]).all() and selection.values["n_filled"] == 2
    assert selection.values["n_candidates"] == 5


def test_same_seed_same_queries_and_processes_change_nothing():
    pred, mav, _, margin = _clusters(n_per_cluster=300)
    entropy = np.random.default_rng(2).random(len(pred))
    pool = _pool(pred, mav, margin, entropy)
    a = query("jsosal", pool, 20, num_known=K, seed=11)
    b = query("jsosal", pool, 20, num_known=K, seed=11)
    c = query("jsosal", pool, 20, num_known=K, seed=11, params={"n_jobs": 2})
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, c.indices)
    np.testing.assert_allclose(a.diagnostics["known_probability"], c.diagnostics["known_probability"])


def test_subsampled_fit_matches_the_full_fit():
    pred, mav, _, _ = _clusters(n_per_cluster=5000)
    full, _ = known_probability(pred, mav, K, MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS, fit_sample_size=None), 3)
    sub, _ = known_probability(pred, mav, K, MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS, fit_sample_size=1000), 3)
    assert np.abs(full - sub).max() < 0.05


@pytest.mark.parametrize(
    "name, params, key",
    [
        ("jsosal", {"a": 0}, "a"),
        ("jsosal", {"a_multiple": 0.5}, "a_multiple"),
        ("jsosal", {"weight_concentration_prior_type": "uniform"}, "weight_concentration_prior_type"),
        ("jsosal_no_entropy", {"mean_precision_prior": -1.0}, "mean_precision_prior"),
        ("lfosa", {"max_iter": 0}, "max_iter"),
        ("lfosa", {"n_jobs": 0}, "n_jobs"),
        ("lfosa", {"a": 3}, "a"),  # lfosa has no a
    ],
)
def test_impossible_parameters_name_the_key(name, params, key):
    with pytest.raises(InputError) as info:
        get_strategy(name).resolve_params(params)
    assert info.value.field == f"strategy_params.{name}.{key}"


def test_detector_plans_follow_the_method_unless_configured(digits_config):
    from osal_ray.data.pool import PoolManifest
    from osal_ray.experiment.plan import plan_strategy

    def networks(config, name):
        return {r.name: r for r in plan_strategy(config, name).networks}

    manifest = PoolManifest("/x", "digits", (8, 8, 1), 16.0, (0.3,), (0.4,), tuple("0123456789"), (3, 8), ("p.parquet",), "t.parquet", 10, 1, 1, "f")
    config = digits_config()
    jsosal_plans = networks(config, "jsosal")
    assert set(jsosal_plans) == {"classifier", "detector"}
    detector = jsosal_plans["detector"]
    assert detector.spec(manifest).num_outputs == 3 and detector.include_invalid
    assert detector.objective_params.to_dict() == {"temperature": 0.5, "class_weights": "inverse_frequency", "class_weight_reduction": "weighted_mean"}
    assert networks(config, "lfosa")["detector"].objective_params.class_weights == "none"
    assert list(networks(config, "entropy")) == ["classifier"]
    ablation = digits_config(**{"detector.class_weights": "none", "detector.temperature": 1.0})
    plan = networks(ablation, "jsosal")["detector"]
    assert plan.objective_params.to_dict() == {"temperature": 1.0, "class_weights": "none", "class_weight_reduction": "weighted_mean"}
    ids, labels = plan.training_set([1, 2], [0, 1], [7, 9], num_known=2, pool_ids=lambda: np.arange(20))
    assert (ids, labels) == ([1, 2, 7, 9], [0, 1, 2, 2])


@pytest.mark.ray
def test_two_round_jsosal_run_on_digits(ray_session, digits_config):
    from osal_ray.experiment import prepare_experiment, run_experiment

    config = digits_config(strategies=["jsosal", "lfosa"], **{"train.keep_checkpoints": "all"})  # every round's runs stay
    run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)
    out = config.resolved_output_dir()
    rounds = pd.read_parquet(out / "rounds.parquet")
    queried = rounds[rounds["round"] > 0]
    assert len(queried) == 4
    assert queried["auroc_known_probability"].between(0.0, 1.0).all()
    for column in ("filter_accuracy", "filter_precision", "filter_recall", "filter_f1"):
        assert queried[column].between(0.0, 1.0).all()
    assert queried[queried["strategy"] == "jsosal"]["known_fraction_top_a"].notna().all()
    assert queried[queried["strategy"] == "lfosa"]["known_fraction_top_a"].isna().all()
    assert (queried["budget_spent"] == queried["round"] * 10).all()
    # Each round trained a detector beside the classifier, on known + invalid samples.
    for strategy in ("jsosal", "lfosa"):
        runs = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(f"{strategy}-"))
        assert sum("detector" in r for r in runs) == 3 and sum("classifier" in r for r in runs) == 3
    queries = pd.read_parquet(out / "queries.parquet")
    assert len(queries) == 40 and not math.isnan(queries[queries["strategy"] == "jsosal"]["score"].iloc[0])
