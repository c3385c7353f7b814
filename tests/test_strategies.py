"""The strategy contract over every registered strategy, then each strategy on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_column

from osal_ray.errors import InputError
from osal_ray.strategies import STRATEGIES, LabeledScores, PoolScores, QueryContext, get_strategy, query, top_k

K = 3


def _pool_and_context(name: str, n: int, seed: int = 0) -> tuple[PoolScores, QueryContext]:
    strategy = get_strategy(name)
    rng = np.random.default_rng(seed)
    ids = np.arange(1000, 1000 + n)
    pool = PoolScores(ids, {c: synthetic_column(c, n, K, rng) for c in strategy.required_columns()})
    labeled = None
    if strategy.needs_labeled:
        m = 12
        labeled = LabeledScores(
            PoolScores(np.arange(m), {c: synthetic_column(c, m, K, rng) for c in strategy.required_columns()}),
            np.array([0, 1, 2, -1] * (m // 4)),
        )
    return pool, QueryContext(num_known=K, rng=np.random.default_rng(seed), labeled=labeled)


@pytest.mark.parametrize("name", STRATEGIES.names())
class TestContract:
    """What every strategy must honour, whatever it ranks by."""

    def test_returns_budget_unique_positions(self, name):
        pool, context = _pool_and_context(name, 200)
        selection = get_strategy(name).select(pool, 25, context)
        assert len(selection.indices) == 25
        assert len(np.unique(selection.indices)) == 25
        assert selection.indices.min() >= 0 and selection.indices.max() < 200
        assert len(selection.scores) == 25

    def test_same_inputs_same_queries(self, name):
        runs = []
        for _ in range(2):
            pool, context = _pool_and_context(name, 150, seed=3)
            runs.append(get_strategy(name).select(pool, 20, context).indices)
        np.testing.assert_array_equal(*runs)

    def test_budget_beyond_pool_takes_everything(self, name):
        pool, context = _pool_and_context(name, 7)
        selection = get_strategy(name).select(pool, 50, context)
        assert sorted(selection.indices.tolist()) == list(range(7))

    def test_zero_budget_and_empty_pool(self, name):
        pool, context = _pool_and_context(name, 30)
        assert len(get_strategy(name).select(pool, 0, context).indices) == 0
        empty = pool.subset(np.zeros(30, dtype=bool))
        assert len(get_strategy(name).select(empty, 5, context).indices) == 0

    def test_inputs_are_not_modified(self, name):
        pool, context = _pool_and_context(name, 60)
        before = {k: v.copy() for k, v in pool.columns.items()}
        get_strategy(name).select(pool, 10, context)
        for key, values in before.items():
            np.testing.assert_array_equal(pool.columns[key], values)

    def test_missing_column_is_refused(self, name):
        strategy = get_strategy(name)
        if not strategy.required_columns():
            pytest.skip("needs no column")
        pool, context = _pool_and_context(name, 20)
        with pytest.raises(KeyError, match=strategy.required_columns()[0]):
            strategy.select(PoolScores(pool.ids, {}), 5, context)

    def test_unknown_parameter_is_refused(self, name):
        with pytest.raises(InputError, match="no_such_param"):
            get_strategy(name).resolve_params({"no_such_param": 1})


def test_registry_refuses_duplicates_and_names_the_known_ones():
    from osal_ray.strategies import register_strategy

    with pytest.raises(ValueError, match="already registered"):
        register_strategy("entropy", columns=())(lambda pool, budget, context: None)
    with pytest.raises(InputError, match="entropy"):
        get_strategy("entropie")


def test_uncertainty_picks_least_confident():
    probs = np.array([[0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.5, 0.4, 0.1], [0.98, 0.01, 0.01]])
    selection = query("uncertainty", PoolScores(np.arange(4), {"probs": probs}), 2, num_known=3)
    assert selection.indices.tolist() == [1, 2]
    np.testing.assert_allclose(selection.scores, [0.66, 0.5])


def test_entropy_picks_highest_entropy():
    entropy = np.array([0.1, 1.0, 0.5, 0.9])
    selection = query("entropy", PoolScores(np.arange(4), {"entropy": entropy}), 2, num_known=3)
    assert selection.indices.tolist() == [1, 3]


def test_margin_picks_smallest_gap():
    probs = np.array([[0.5, 0.45, 0.05], [0.8, 0.1, 0.1], [0.4, 0.39, 0.21], [0.6, 0.2, 0.2]])
    selection = query("margin", PoolScores(np.arange(4), {"probs": probs}), 2, num_known=3)
    assert selection.indices.tolist() == [2, 0]


def test_random_is_uniform_and_seeded():
    pool = PoolScores(np.arange(10), {})
    counts = np.zeros(10)
    for seed in range(400):
        counts[query("random", pool, 3, num_known=2, seed=seed).indices] += 1
    assert counts.min() > 80 and counts.max() < 160  # expectation 120 each
    assert query("random", pool, 3, num_known=2, seed=5).indices.tolist() == query("random", pool, 3, num_known=2, seed=5).indices.tolist()


def test_coreset_is_k_center_greedy():
    # Labeled centre at 0; pool on a line. Farthest first: 10, then 5 (farthest from {0, 10}), then 2 or 3 / 7 or 8.
    line = np.array([[1.0], [2.0], [3.0], [5.0], [7.0], [8.0], [10.0]], dtype=np.float32)
    labeled = LabeledScores(PoolScores(np.array([99]), {"embedding": np.zeros((1, 1), dtype=np.float32)}), np.array([0]))
    selection = query("coreset", PoolScores(np.arange(7), {"embedding": line}), 3, num_known=2, labeled=labeled)
    assert selection.indices[:2].tolist() == [6, 3]
    assert selection.indices[2] in (1, 2, 4, 5)
    np.testing.assert_allclose(selection.scores[:2], [10.0, 5.0])


def test_coreset_chunking_does_not_change_the_answer():
    rng = np.random.default_rng(3)
    pool = PoolScores(np.arange(300), {"embedding": rng.normal(size=(300, 4)).astype(np.float32)})
    labeled = LabeledScores(PoolScores(np.arange(1000, 1040), {"embedding": rng.normal(size=(40, 4)).astype(np.float32)}),
                            np.zeros(40, dtype=np.int64))
    whole = query("coreset", pool, 12, num_known=2, labeled=labeled, params={"chunk_size": 4096})
    blocks = query("coreset", pool, 12, num_known=2, labeled=labeled, params={"chunk_size": 7})  # 7 rows x 7 centres
    assert blocks.indices.tolist() == whole.indices.tolist()
    np.testing.assert_allclose(blocks.scores, whole.scores, rtol=1e-5)


def test_coreset_with_coinciding_points_never_repeats():
    pool = PoolScores(np.arange(5), {"embedding": np.ones((5, 2), dtype=np.float32)})
    labeled = LabeledScores(PoolScores(np.array([9]), {"embedding": np.ones((1, 2), dtype=np.float32)}), np.array([0]))
    selection = query("coreset", pool, 5, num_known=2, labeled=labeled)
    assert sorted(selection.indices.tolist()) == [0, 1, 2, 3, 4]


def test_top_k_breaks_ties_by_position_and_ignores_nan():
    scores = np.array([1.0, 3.0, np.nan, 3.0, 2.0] + [0.0] * 40)
    assert top_k(scores, 3).tolist() == [1, 3, 4]
    assert top_k(scores, 2, candidates=np.array([0, 2, 4])).tolist() == [4, 0]


def test_top_k_breaks_ties_by_the_secondary_score_then_at_random():
    scores = np.ones(3000)  # saturated posteriors
    secondary = np.zeros(3000)
    secondary[[2500, 10, 1700]] = [3.0, 2.0, 1.0]
    chosen = top_k(scores, 200, tiebreak=secondary, rng=np.random.default_rng(0))
    assert chosen[:3].tolist() == [2500, 10, 1700]
    # The remaining ties are random, not the first positions of the pool.
    rest = chosen[3:]
    assert not set(rest.tolist()) <= set(range(250))
    assert 1100 < rest.mean() < 1900  # uniform over 0..2999: mean ~1500
    again = top_k(scores, 200, tiebreak=secondary, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, again)
    # A strictly better primary score still wins over any tie-break.
    scores[5] = 2.0
    assert top_k(scores, 1, tiebreak=secondary, rng=np.random.default_rng(1)).tolist() == [5]


@pytest.mark.parametrize("name", ["lfosa", "jsosal", "jsosal_no_entropy"])
def test_saturated_known_probabilities_are_not_queried_in_pool_order(name):
    """Thousands of posteriors equal 1.0: the queries used to be the first 200 pool positions (with
    image folders: one class). They follow the MAV, then chance."""
    rng = np.random.default_rng(0)
    n = 4000
    mav = np.concatenate([rng.normal(30.0, 0.01, n - 500), rng.normal(2.0, 0.5, 500)]).astype(np.float32)
    pool = PoolScores(np.arange(n), {
        "det_pred": np.zeros(n, dtype=np.int64), "det_mav": mav, "det_known_margin": np.ones(n, dtype=np.float32),
        "entropy": np.full(n, 0.5, dtype=np.float32),
    })
    selection = query(name, pool, 200, num_known=2, seed=3)
    chosen = selection.indices
    assert (selection.diagnostics["known_probability"][: n - 500] == 1.0).mean() > 0.5  # saturated
    assert chosen.max() >= 1000 and chosen.mean() > 600
