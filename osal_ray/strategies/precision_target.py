"""Candidate sets sized so that the achieved query precision tracks a target (EAOA, E2OAL).

The previous round's picks are remembered in ``QueryContext.carry`` (``last_query_ids``); once
annotated, their labels in ``context.labeled`` give the precision that round achieved (the known
share of its queries). Two update rules, as in the reference code:

- EAOA (``adapt_multiplier``): the candidate multiplier k grows by ``step`` when the precision
  was above the target by more than ``tolerance``, and shrinks by ``step`` (never below 1) when
  below it: a larger candidate set admits less likely knowns.
- E2OAL (``adapt_target`` and ``candidate_length``): a working target moves by (target - achieved),
  clipped to [0, 1], and the candidate set is the shortest prefix of the most likely known whose
  b most informative samples have an expected known count (sum of probabilities) at most
  working target x b.
"""

from __future__ import annotations

import heapq
import math
from typing import Mapping

import numpy as np

from osal_ray.strategies.base import LabeledScores

LAST_QUERY = "last_query_ids"


def previous_precision(carry: Mapping[str, np.ndarray], labeled: LabeledScores | None) -> float | None:
    """The known share of last round's picks whose labels are in ``labeled`` (None before any, or none annotated)."""
    ids = np.asarray(carry.get(LAST_QUERY, np.empty(0)), dtype=np.int64)
    if not len(ids) or labeled is None or not len(labeled.labels):
        return None
    found = np.isin(labeled.scores.ids, ids)
    if not found.any():
        return None
    return float((labeled.labels[found] >= 0).mean())


def remember_query(carry: Mapping[str, np.ndarray], ids: np.ndarray, **values: float) -> dict[str, np.ndarray]:
    """The carry for next round: ``carry`` with this round's picked ids and scalar ``values`` (as 1-element arrays)."""
    out = {k: np.asarray(v) for k, v in carry.items()}
    out[LAST_QUERY] = np.asarray(ids, dtype=np.int64)
    out.update({k: np.asarray([float(v)]) for k, v in values.items()})
    return out


def carried_value(carry: Mapping[str, np.ndarray], key: str, default: float) -> float:
    """A scalar saved by ``remember_query`` (``default`` when absent)."""
    value = carry.get(key)
    return float(np.asarray(value).ravel()[0]) if value is not None and np.asarray(value).size else float(default)


def adapt_multiplier(k: float, precision: float | None, target: float, step: float, tolerance: float) -> float:
    """EAOA's rule: k + step if precision > target + tolerance, k - step if below target - tolerance (k stays >= 1)."""
    if precision is None or abs(precision - target) <= tolerance:
        return k
    if precision > target:
        return k + step
    return k - step if k - step >= 1 else k


def adapt_target(current: float, precision: float | None, target: float) -> float:
    """E2OAL's rule: the working target moves by (target - achieved precision), clipped to [0, 1]."""
    if precision is None:
        return current
    return min(max(current + (target - precision), 0.0), 1.0)


def candidate_length(probability: np.ndarray, informativeness: np.ndarray, target_sum: float, budget: int) -> int:
    """The shortest k >= ``budget`` such that, among the k most likely known, the ``budget`` most
    informative have floor(sum of probabilities) <= ``target_sum``; the pool size if none (or if
    ``target_sum`` <= 0). One pass with a heap, O(n log b)."""
    probability = np.asarray(probability, dtype=np.float64)
    informativeness = np.asarray(informativeness, dtype=np.float64)
    n = len(probability)
    if target_sum <= 0 or n < budget or budget <= 0:
        return n
    order = np.argsort(-probability, kind="stable")
    heap = [(informativeness[i], int(i)) for i in order[:budget]]
    heapq.heapify(heap)
    total = float(probability[order[:budget]].sum())
    if math.floor(total + 1e-9) <= target_sum:
        return budget
    for k in range(budget, n):
        i = int(order[k])
        if informativeness[i] > heap[0][0]:
            _, out = heapq.heapreplace(heap, (informativeness[i], i))
            total += probability[i] - probability[out]
            if math.floor(total + 1e-9) <= target_sum:
                return k + 1
    return n
