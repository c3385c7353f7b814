"""Closed-set baselines: random, least confidence ("CONF"), entropy, margin, BALD with MC dropout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.params import Params, positive_int, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k


@dataclass(frozen=True)
class BaldParams(Params):
    """MC dropout: the drop probability of the classifier's dropout head and the number of masks."""

    dropout: float = 0.5
    mc_samples: int = 20

    def check(self, where: str) -> None:
        if not 0.0 < self.dropout < 1.0:
            refuse(where, "dropout", "must be in (0, 1)")
        if not positive_int(self.mc_samples) or self.mc_samples < 2:
            refuse(where, "mc_samples", "must be an integer >= 2")


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



def _bald_network(params: BaldParams) -> dict[str, NetworkOptions]:
    return {"classifier": NetworkOptions(head="mc_dropout", head_kwargs={"p": params.dropout, "samples": params.mc_samples})}


@register_strategy("bald", columns=("bald",), params=BaldParams, networks=_bald_network)
def bald(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """BALD with MC dropout: the b samples whose prediction varies most, in information, over dropout masks."""
    score = pool["bald"]
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])
