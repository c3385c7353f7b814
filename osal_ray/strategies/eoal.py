"""EOAL (Safaei et al., AAAI 2024): entropic open-set active learning.

Among the samples the K+1 detector predicts as known, query the lowest
``H_c - H_d``: H_c is the closed-set entropy of the K one-vs-all heads (bits, mean over heads),
H_d the entropy of softmax(-distance) to the centres of the queried unknowns' FINCH clusters,
normalised by ln(number of centres). Before any unknown is known (or with fewer than two
centres), H_c alone. For diversity the candidates are FINCH-clustered (the finest partition
with at most b clusters) and picked round-robin, best first in each cluster; a shortfall is
filled from the detector's rejected samples, lowest score first.

Against the reference code: its round-robin never ends when the remaining budget is below the
number of clusters (the per-cluster quota is 0); here the quota is recomputed every pass and is
at least one, and the loop ends when the budget is spent or every cluster is empty. Its random
baseline crashes; ours is the shared ``random`` strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from osal_ray.clustering import cluster_centres, finch_clusters, finch_partition_at_most
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.training.objective_params import OpenSetLossParams


@dataclass(frozen=True)
class EoalParams(OpenSetLossParams):
    """The detector's loss weights (``OpenSetLossParams``) and whether picks are diversified by FINCH clusters."""

    diversity: bool = True


def _networks(params: EoalParams) -> dict[str, NetworkOptions]:
    return {
        "detector": NetworkOptions(
            head="ova",
            objective="eoal",
            objective_params={k: getattr(params, k) for k in OpenSetLossParams.names()},
        )
    }


def distance_entropy(embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Entropy of softmax(-Euclidean distance to each centre), divided by ln(number of centres)."""
    if len(centres) < 2:
        return np.zeros(len(embeddings))
    sq = (embeddings**2).sum(1)[:, None] - 2 * embeddings @ centres.T + (centres**2).sum(1)[None, :]
    logits = -np.sqrt(np.maximum(sq, 0.0))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(p + 1e-20)).sum(axis=1) / math.log(len(centres))


def round_robin(scores: np.ndarray, clusters: np.ndarray, budget: int) -> np.ndarray:
    """Positions picked cluster by cluster, lowest score first within each, until ``budget`` or exhaustion."""
    order = np.lexsort((np.arange(len(scores)), scores, clusters))  # by cluster, then score, then position
    starts = np.flatnonzero(np.r_[True, np.diff(clusters[order]) != 0]) if len(order) else np.empty(0, dtype=np.int64)
    queues = np.split(order, starts[1:])
    heads = [0] * len(queues)
    picked: list[int] = []
    while len(picked) < budget:
        active = [i for i, q in enumerate(queues) if heads[i] < len(q)]
        if not active:
            break
        quota = max(1, (budget - len(picked)) // len(active))
        for i in active:
            take = queues[i][heads[i] : heads[i] + min(quota, budget - len(picked))]
            heads[i] += len(take)
            picked.extend(take.tolist())
            if len(picked) >= budget:
                break
    return np.asarray(picked, dtype=np.int64)


@register_strategy(
    "eoal", columns=("det_pred", "ova_closed_entropy", "det_embedding"), needs_labeled=True,
    params=EoalParams, networks=_networks,
)
def eoal(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """EOAL: lowest closed-set minus distance entropy among predicted-known samples, diversified by FINCH clusters."""
    k = context.num_known
    embeddings = np.asarray(pool["det_embedding"], dtype=np.float64)
    score = np.asarray(pool["ova_closed_entropy"], dtype=np.float64).copy()
    centres = np.empty((0, embeddings.shape[1]))
    if context.labeled is not None:
        invalid = context.labeled.labels < 0
        unknown = np.asarray(context.labeled.scores["det_embedding"], dtype=np.float64)[invalid]
        if len(unknown):
            centres = cluster_centres(unknown, finch_clusters(unknown, context.params.clusters_per_class * k))
            score -= distance_entropy(embeddings, centres)
    predicted_known = np.asarray(pool["det_pred"]) < k
    candidates = np.flatnonzero(predicted_known)
    if context.params.diversity and len(candidates) > budget:
        clusters = finch_partition_at_most(embeddings[candidates], budget)
        chosen = candidates[round_robin(score[candidates], clusters, budget)]
        n_clusters = int(clusters.max()) + 1
    else:
        chosen = top_k(-score, budget, candidates, rng=context.rng)
        n_clusters = 0
    extra = top_k(-score, budget - len(chosen), np.flatnonzero(~predicted_known), rng=context.rng)
    indices = np.concatenate([chosen, extra])
    return Selection(
        indices,
        score[indices],
        diagnostics={"predicted_known": predicted_known},
        values={"n_filled": float(len(extra)), "n_unknown_centres": float(len(centres)), "n_diversity_clusters": float(n_clusters)},
    )
