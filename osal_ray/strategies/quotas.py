"""Per-class quotas: query an equal share of the budget from each predicted known class.

EAOA and E2OAL (Zong et al.) split the budget b into ceil(b / K) queries per predicted class:
in each class a candidate set of the ``per_class_candidates`` samples most likely known, of which
the ``per_class_queries`` most informative are taken; the union is shuffled and cut to b.
"""

from __future__ import annotations

import math

import numpy as np

from osal_ray.strategies.base import top_k


def class_quota(budget: int, num_known: int) -> int:
    """Queries per predicted known class: ceil(budget / K)."""
    return int(math.ceil(budget / max(num_known, 1)))


def per_class_picks(predicted: np.ndarray, purity: np.ndarray, informativeness: np.ndarray, num_known: int,
                    per_class_candidates: int, per_class_queries: int, budget: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions chosen class by class, then shuffled and cut to ``budget``; and the candidate mask.

    For each predicted class c < K: the ``per_class_candidates`` largest ``purity`` among the
    samples predicted c (all of them when fewer), of which the ``per_class_queries`` largest
    ``informativeness``. A sample predicted K or more (unknown, a pseudo-class) is never picked.
    """
    predicted = np.asarray(predicted)
    candidates = np.zeros(len(predicted), dtype=bool)
    picked: list[np.ndarray] = []
    for c in range(num_known):
        members = np.flatnonzero(predicted == c)
        if not len(members):
            continue
        kept = top_k(purity, per_class_candidates, members, rng=rng)
        candidates[kept] = True
        picked.append(kept[top_k(np.asarray(informativeness)[kept], per_class_queries, rng=rng)])
    chosen = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
    return rng.permutation(chosen)[:budget], candidates


def fill_shortfall(chosen: np.ndarray, score: np.ndarray, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``chosen`` followed by the highest ``score`` of the rest up to ``budget``; and how many were added."""
    rest = np.setdiff1d(np.arange(len(score)), chosen)
    extra = top_k(score, budget - len(chosen), rest, rng=rng) if len(chosen) < budget else np.empty(0, dtype=np.int64)
    return np.concatenate([np.asarray(chosen, dtype=np.int64), extra]), len(extra)
