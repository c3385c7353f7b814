"""Learning loss (Yoo & Kweon, CVPR 2019): query the samples whose predicted loss is highest."""

from __future__ import annotations

from typing import Any, Mapping

from osal_ray.errors import InputError
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k

LL_DEFAULTS = {"weight": 1.0, "margin": 1.0, "detach_fraction": 0.6}


def loss_prediction_network(params: Mapping[str, Any]) -> NetworkOptions:
    """The classifier with a loss-prediction module, trained jointly (CE + weight x ranking loss)."""
    return NetworkOptions(
        head="loss_prediction",
        objective="learning_loss",
        objective_params={k: params[k] for k in LL_DEFAULTS},
    )


def check_ll(name: str):
    def check(params: Mapping[str, Any]) -> None:
        if params["weight"] < 0:
            raise InputError(f"strategy_params.{name}.weight", "must be >= 0")
        if params["margin"] <= 0:
            raise InputError(f"strategy_params.{name}.margin", "must be positive")
        if not 0.0 <= params["detach_fraction"] <= 1.0:
            raise InputError(f"strategy_params.{name}.detach_fraction", "must be in [0, 1]")

    return check


@register_strategy(
    "ll", columns=("predicted_loss",), defaults=LL_DEFAULTS,
    networks=lambda params: {"classifier": loss_prediction_network(params)}, check=check_ll("ll"),
)
def learning_loss(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Learning loss: query the b samples with the highest loss predicted by the loss-prediction module."""
    score = pool["predicted_loss"]
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])
