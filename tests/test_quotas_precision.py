"""The reusable pieces of EAOA and E2OAL: per-class quotas and candidate sizes that track a precision target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from osal_ray.strategies import LabeledScores, PoolScores
from osal_ray.strategies.precision_target import (
    adapt_multiplier,
    adapt_target,
    candidate_length,
    carried_value,
    previous_precision,
    remember_query,
)
from osal_ray.strategies.quotas import class_quota, fill_shortfall, per_class_picks


def test_class_quota_is_the_ceiling_share():
    assert class_quota(30, 3) == 10 and class_quota(31, 3) == 11 and class_quota(5, 10) == 1


def test_per_class_picks_respect_the_quotas():
    rng = np.random.default_rng(0)
    predicted = rng.integers(0, 4, 400)  # class 3 is a pseudo/unknown prediction with K = 3
    purity, info = rng.random(400), rng.random(400)
    chosen, candidates = per_class_picks(predicted, purity, info, 3, 20, 5, 15, np.random.default_rng(1))
    assert len(chosen) == 15 and len(np.unique(chosen)) == 15
    assert (predicted[chosen] < 3).all() and np.bincount(predicted[chosen], minlength=3).tolist() == [5, 5, 5]
    for c in range(3):
        members = np.flatnonzero(predicted == c)
        top = members[np.argsort(-purity[members])[:20]]
        assert set(np.flatnonzero(candidates & (predicted == c))) == set(top)  # the 20 purest of the class
        picked = chosen[predicted[chosen] == c]
        assert set(picked) == set(top[np.argsort(-info[top])[:5]])  # the 5 most informative of those
    assert not candidates[predicted == 3].any()


def test_per_class_picks_cut_to_the_budget_and_a_small_class_gives_what_it_has():
    predicted = np.array([0] * 50 + [1] * 2)
    score = np.linspace(0, 1, 52)
    chosen, _ = per_class_picks(predicted, score, score, 2, 10, 4, 7, np.random.default_rng(0))
    assert len(chosen) == 6 and (predicted[chosen] == 1).sum() == 2  # 4 + 2 < 7
    filled, n = fill_shortfall(chosen, score, 7, np.random.default_rng(0))
    assert n == 1 and len(filled) == 7 and len(np.unique(filled)) == 7
    chosen, _ = per_class_picks(np.array([0] * 50 + [1] * 50), score.repeat(2)[:100], score.repeat(2)[:100], 2, 10, 4, 5,
                                np.random.default_rng(0))
    assert len(chosen) == 5  # 8 picked, shuffled, cut to b


def _labeled(ids, labels) -> LabeledScores:
    return LabeledScores(PoolScores(np.asarray(ids), {}), np.asarray(labels))


def test_previous_precision_reads_last_round_picks_from_the_labeled_set():
    carry = remember_query({}, np.array([5, 6, 7, 8]), k=6.0)
    assert carried_value(carry, "k", 5.0) == 6.0 and carried_value({}, "k", 5.0) == 5.0
    labeled = _labeled([1, 5, 6, 7, 8, 9], [0, 1, -1, 0, -1, -1])
    assert previous_precision(carry, labeled) == 0.5
    assert previous_precision({}, labeled) is None
    assert previous_precision(carry, _labeled([1, 2], [0, 0])) is None  # none of them annotated (yet)
    assert previous_precision(remember_query({}, np.array([5, 99])), labeled) == 1.0  # a skipped one is left out


def test_adapt_multiplier_is_eaoas_rule():
    assert adapt_multiplier(5, 0.8, 0.6, 1, 0.05) == 6
    assert adapt_multiplier(5, 0.3, 0.6, 1, 0.05) == 4
    assert adapt_multiplier(5, 0.63, 0.6, 1, 0.05) == 5  # within the tolerance
    assert adapt_multiplier(1.5, 0.0, 0.6, 1, 0.05) == 1.5  # never below 1
    assert adapt_multiplier(5, None, 0.6, 1, 0.05) == 5


def test_adapt_target_is_e2oals_rule():
    assert adapt_target(0.6, 0.4, 0.6) == pytest.approx(0.8)
    assert adapt_target(0.9, 0.2, 0.6) == 1.0 and adapt_target(0.1, 1.0, 0.6) == 0.0
    assert adapt_target(0.7, None, 0.6) == 0.7


def _reference_length(probs, uncerts, target_sum, top_k):
    """The reference code's loop, O(n^2 log n)."""
    order = np.argsort(-probs)
    if target_sum <= 0:
        return len(probs)
    for k in range(top_k, len(probs) + 1):
        chosen = order[:k][np.argsort(-uncerts[order[:k]])[:top_k]]
        if int(probs[chosen].sum()) <= target_sum:
            return k
    return len(probs)


@pytest.mark.parametrize("seed, target", [(0, 0.6), (1, 0.3), (2, 0.9), (3, 0.0), (4, 1.0)])
def test_candidate_length_equals_the_reference_loop(seed, target):
    rng = np.random.default_rng(seed)
    n, b = 300, 20
    known = rng.random(n) < 0.5
    probs = np.clip(np.where(known, rng.beta(5, 1, n), rng.beta(1, 5, n)), 0, 1)
    uncerts = rng.random(n) + 0.5 * ~known  # the unknowns look informative
    assert candidate_length(probs, uncerts, target * b, b) == _reference_length(probs, uncerts, target * b, b)


def _synthetic_pool(rng, per_class=1000, num_known=3):
    """Per class, the unknown share grows down the purity ranking, and unknowns look most informative:
    a larger candidate set means a lower precision, so the multiplier has a precision it can reach."""
    predicted = np.repeat(np.arange(num_known), per_class)
    rank = np.tile(np.arange(per_class), num_known) / per_class
    unknown = rng.random(len(rank)) < rank
    purity = 1.0 - rank
    info = unknown + 0.01 * rng.random(len(rank))
    return predicted, purity, info, ~unknown


def test_the_multiplier_tracks_the_precision_target_on_a_synthetic_pool():
    rng = np.random.default_rng(0)
    predicted, purity, info, known = _synthetic_pool(rng)
    k, achieved = 1.0, []
    for _ in range(25):
        chosen, _ = per_class_picks(predicted, purity, info, 3, 10 * int(k), 10, 30, rng)
        achieved.append(known[chosen].mean())
        k = adapt_multiplier(k, achieved[-1], 0.6, 1.0, 0.05)
    assert achieved[0] > 0.9  # k = 1: only the purest, nearly all known
    assert abs(np.mean(achieved[-10:]) - 0.6) < 0.1  # settled around the target
    assert 5 <= k <= 14


def test_the_working_target_tracks_the_precision_on_a_synthetic_pool():
    """E2OAL's loop on a pool whose known probabilities are optimistic: the working target falls below
    the target until the achieved precision reaches it."""
    rng = np.random.default_rng(1)
    predicted, purity, info, known = _synthetic_pool(rng)
    probability = np.clip(purity + 0.3, 0, 1)  # overconfident
    working, achieved = 0.6, []
    for _ in range(20):
        length = candidate_length(probability, info, working * 30, 30)
        chosen, _ = per_class_picks(predicted, purity, info, 3, math.ceil(length / 3), 10, 30, rng)
        achieved.append(known[chosen].mean())
        working = adapt_target(working, achieved[-1], 0.6)
    assert abs(np.mean(achieved[-10:]) - 0.6) < 0.12
