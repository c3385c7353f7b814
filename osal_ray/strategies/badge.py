"""BADGE (Ash et al., ICLR 2020): k-means++ seeding on gradient embeddings.

A sample's gradient embedding is the gradient of the cross-entropy at its predicted label with
respect to the classifier's last layer: g = (p - e_yhat) (x) h, with p the class probabilities
and h the penultimate embedding. Its norm is large where the classifier is uncertain, and
k-means++ seeding (each next centre drawn with probability proportional to its squared distance
to the nearest centre chosen so far) spreads the batch over the embedding space.

The outer product is never formed: g_i . g_j = ((p_i - e_i) . (p_j - e_j)) (h_i . h_j), so a pass
costs O(N (K + D)) memory and time per pick whatever K x D is, which keeps CIFAR-100-sized
embeddings (K = 40, D = 512) at the size of the gathered columns.

The reference seeds the first centre at the largest gradient norm and draws the others at
random; ``query`` counts only the batch's centres (annotated samples are not centres), as the
reference does.
"""

from __future__ import annotations

import numpy as np

from osal_ray.strategies.base import PoolScores, QueryContext, Selection, register_strategy


def gradient_factors(probs: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p - e_yhat, h) per sample: the two factors of the last-layer gradient embedding."""
    probs = np.asarray(probs, dtype=np.float64)
    residual = probs.copy()
    residual[np.arange(len(probs)), probs.argmax(axis=1)] -= 1.0
    return residual, np.asarray(embedding, dtype=np.float64)


def kmeans_pp(residual: np.ndarray, embedding: np.ndarray, k: int, rng: np.random.Generator,
              weights: np.ndarray | None = None, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding on the gradient embeddings (residual (x) embedding).

    The first centre is the largest (weighted) squared norm; each next one is drawn with
    probability proportional to weight x squared distance to the nearest centre so far.
    ``weights`` (optional, >= 0; e.g. a probability of being worth a label) scale that mass
    without moving the samples: distances stay those of the gradient embeddings. Returns the
    chosen positions in draw order and each one's squared distance to the earlier centres when
    drawn (the first: its squared norm). ``centres`` (optional positions) are centres chosen
    already, by another rule: the draws keep away from them, and they are not returned.
    """
    n = len(residual)
    given = np.unique(np.asarray(centres if centres is not None else [], dtype=np.int64))
    k = min(k, n - len(given))
    weight = np.ones(n) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    sq_norm = (residual**2).sum(1) * (embedding**2).sum(1)
    chosen = np.empty(max(k, 0), dtype=np.int64)
    drawn = np.empty(max(k, 0))
    nearest = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)

    def add_centre(index: int) -> None:
        taken[index] = True
        cross = (residual @ residual[index]) * (embedding @ embedding[index])
        np.minimum(nearest, sq_norm + sq_norm[index] - 2.0 * cross, out=nearest)

    for index in given:
        add_centre(int(index))
    for step in range(max(k, 0)):
        first = step == 0 and not len(given)
        mass = weight * (sq_norm if first else np.maximum(nearest, 0.0))
        mass[taken] = 0.0
        total = mass.sum()
        if first or total <= 0 or not np.isfinite(total):
            # The first centre, or every remaining sample coincides with a centre or weighs 0:
            # the largest remaining mass, then weight, then position.
            free = np.flatnonzero(~taken)
            index = int(free[np.lexsort((free, -weight[free], -mass[free]))[0]])
        else:
            index = int(rng.choice(n, p=mass / total))
        drawn[step] = sq_norm[index] if first else nearest[index]
        chosen[step] = index
        add_centre(index)
    return chosen, drawn


@register_strategy("badge", columns=("probs", "embedding"))
def badge(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """BADGE: k-means++ seeding on the classifier's last-layer gradient embeddings (uncertain and diverse)."""
    residual, embedding = gradient_factors(pool["probs"], pool["embedding"])
    chosen, drawn = kmeans_pp(residual, embedding, budget, context.rng)
    return Selection(chosen, np.sqrt(np.maximum(drawn, 0.0)))
