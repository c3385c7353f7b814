"""Learning loss (Yoo & Kweon, CVPR 2019): query the samples whose predicted loss is highest."""

from __future__ import annotations

from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.training.objective_params import LossPredictionParams


def loss_prediction_network(params: LossPredictionParams) -> NetworkOptions:
    """The classifier with a loss-prediction module, trained jointly (CE + weight x ranking loss)."""
    return NetworkOptions(
        head="loss_prediction",
        objective="learning_loss",
        objective_params={k: getattr(params, k) for k in LossPredictionParams.names()},
    )


@register_strategy(
    "ll", columns=("predicted_loss",), params=LossPredictionParams,
    networks=lambda params: {"classifier": loss_prediction_network(params)},
)
def learning_loss(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """Learning loss: query the b samples with the highest loss predicted by the loss-prediction module."""
    score = pool["predicted_loss"]
    chosen = top_k(score, budget, rng=context.rng)
    return Selection(chosen, score[chosen])
