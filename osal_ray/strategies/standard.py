"""Closed-set baselines: random, least confidence ("CONF"), entropy, margin."""

from __future__ import annotations

import numpy as np

from osal_ray.strategies.base import PoolScores, QueryContext, Selection, register_strategy, top_k


@register_strategy("random", columns=())
def random_sampling(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Query b samples uniformly at random."""
    indices = context.rng.choice(len(pool), size=min(budget, len(pool)), replace=False)
    return Selection(np.sort(indices), np.zeros(len(indices)))


@register_strategy("uncertainty", columns=("probs",))
def least_confidence(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Query the b samples whose top class probability is lowest (score 1 - max p)."""
    score = 1.0 - pool["probs"].max(axis=1)
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])


@register_strategy("entropy", columns=("entropy",))
def entropy_sampling(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Query the b samples with the highest predictive entropy of the classifier."""
    score = pool["entropy"]
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])


@register_strategy("margin", columns=("probs",))
def margin_sampling(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Query the b samples with the smallest gap between the two most probable classes."""
    top2 = np.sort(pool["probs"], axis=1)[:, -2:]
    score = 1.0 - (top2[:, 1] - top2[:, 0])
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])

