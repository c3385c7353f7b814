"""Coreset (Sener & Savarese, 2018): k-center greedy on the classifier's embeddings."""

from __future__ import annotations

import numpy as np

from osal_ray.strategies.base import PoolScores, QueryContext, Selection, register_strategy


@register_strategy("coreset", columns=("embedding",), needs_labeled=True, defaults={"chunk_size": 4096})
def coreset(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Repeatedly query the pool sample farthest from every annotated sample and every pick so far.

    All annotated samples (known and invalid) count as centres: they are no longer in the pool.
    The recorded score is the sample's distance to its nearest centre when it was picked.
    """
    features = np.asarray(pool["embedding"], dtype=np.float32)
    centres = np.asarray(context.labeled.scores["embedding"], dtype=np.float32) if context.labeled else features[:0]
    chunk = int(context.params["chunk_size"])
    nearest = np.full(len(features), np.inf, dtype=np.float64)
    for start in range(0, len(centres), chunk):
        nearest = np.minimum(nearest, _min_sq_distance(features, centres[start : start + chunk]))
    if not np.isfinite(nearest).any():
        # No annotated sample: start from the point nearest the mean, as a deterministic seed.
        first = int(np.argmin(((features - features.mean(0)) ** 2).sum(1)))
        nearest = _min_sq_distance(features, features[first : first + 1])
        nearest[first] = -np.inf
        picks, scores = [first], [0.0]
    else:
        picks, scores = [], []
    while len(picks) < min(budget, len(features)):
        index = int(np.argmax(nearest))
        picks.append(index)
        scores.append(float(np.sqrt(max(nearest[index], 0.0))))
        nearest = np.minimum(nearest, _min_sq_distance(features, features[index : index + 1]))
        nearest[index] = -np.inf  # never again, even when many points coincide
    return Selection(np.asarray(picks, dtype=np.int64), np.asarray(scores))


def _min_sq_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance from every point to its nearest centre."""
    cross = points @ centres.T
    sq = (points**2).sum(1)[:, None] - 2.0 * cross + (centres**2).sum(1)[None, :]
    return np.maximum(sq.min(axis=1), 0.0).astype(np.float64)
