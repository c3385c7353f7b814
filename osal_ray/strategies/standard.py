"""Closed-set baselines: random, least confidence ("CONF"), entropy, margin, BALD with MC dropout."""

from __future__ import annotations

import numpy as np

from typing import Any, Mapping

from osal_ray.errors import InputError
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k

BALD_DEFAULTS = {"dropout": 0.5, "mc_samples": 20}


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



def _bald_network(params: Mapping[str, Any]) -> dict[str, NetworkOptions]:
    return {"classifier": NetworkOptions(head="mc_dropout", head_kwargs={"p": params["dropout"], "samples": params["mc_samples"]})}


def _check_bald(params: Mapping[str, Any]) -> None:
    if not 0.0 < params["dropout"] < 1.0:
        raise InputError("strategy_params.bald.dropout", "must be in (0, 1)")
    if not isinstance(params["mc_samples"], int) or params["mc_samples"] < 2:
        raise InputError("strategy_params.bald.mc_samples", "must be an integer >= 2")


@register_strategy("bald", columns=("bald",), defaults=BALD_DEFAULTS, networks=_bald_network, check=_check_bald)
def bald(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """BALD with MC dropout: the b samples whose prediction varies most, in information, over dropout masks."""
    score = pool["bald"]
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])
