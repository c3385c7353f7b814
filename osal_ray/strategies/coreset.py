"""Coreset (Sener & Savarese, 2018): k-center greedy on the classifier's embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.params import Params, positive_int, refuse
from osal_ray.strategies.base import PoolScores, QueryContext, Selection, register_strategy


@dataclass(frozen=True)
class CoresetParams(Params):
    """``chunk_size``: pool rows per distance block (memory, not results)."""

    chunk_size: int = 4096

    def check(self, where: str) -> None:
        if not positive_int(self.chunk_size):
            refuse(where, "chunk_size", "must be a positive integer")


@register_strategy("coreset", columns=("embedding",), needs_labeled=True, params=CoresetParams)
def coreset(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Repeatedly query the pool sample farthest from every annotated sample and every pick so far.

    All annotated samples (known and invalid) count as centres: they are no longer in the pool.
    The recorded score is the sample's distance to its nearest centre when it was picked.
    """
    features = np.asarray(pool["embedding"], dtype=np.float32)
    centres = np.asarray(context.labeled.scores["embedding"], dtype=np.float32) if context.labeled else features[:0]
    chunk = context.params.chunk_size
    norms = (features**2).sum(1)
    nearest = _min_sq_distance(features, norms, centres, chunk)
    if not np.isfinite(nearest).any():
        # No annotated sample: start from the point nearest the mean, as a deterministic seed.
        first = int(np.argmin(((features - features.mean(0)) ** 2).sum(1)))
        nearest = _min_sq_distance(features, norms, features[first : first + 1], chunk)
        nearest[first] = -np.inf
        picks, scores = [first], [0.0]
    else:
        picks, scores = [], []
    while len(picks) < min(budget, len(features)):
        index = int(np.argmax(nearest))
        picks.append(index)
        scores.append(float(np.sqrt(max(nearest[index], 0.0))))
        nearest = np.minimum(nearest, _min_sq_distance(features, norms, features[index : index + 1], chunk))
        nearest[index] = -np.inf  # never again, even when many points coincide
    return Selection(np.asarray(picks, dtype=np.int64), np.asarray(scores))


def _min_sq_distance(points: np.ndarray, norms: np.ndarray, centres: np.ndarray, chunk: int) -> np.ndarray:
    """Squared Euclidean distance from every point to its nearest centre (inf without centres).

    ``norms`` are the points' squared norms; blocks of ``chunk`` points x ``chunk`` centres
    bound the temporary memory whatever the pool size.
    """
    nearest = np.full(len(points), np.inf, dtype=np.float64)
    for c in range(0, len(centres), chunk):
        block = centres[c : c + chunk]
        block_norms = (block**2).sum(1)
        for p in range(0, len(points), chunk):
            sq = norms[p : p + chunk, None] - 2.0 * (points[p : p + chunk] @ block.T) + block_norms[None, :]
            nearest[p : p + chunk] = np.minimum(nearest[p : p + chunk], sq.min(axis=1))
    return np.maximum(nearest, 0.0)
