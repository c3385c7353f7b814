"""VLPure-AL: purity first from CLIPN, then a standard informativeness strategy on the predicted-ID.

Per round (all pure numpy on gathered columns):

1. Self-temperature tuning (Eq. 8): on the labeled samples (known = ID, invalid = OOD) choose
   the scale s that maximises the balanced accuracy of the ID/OOD decision, over a grid
   (0.1 .. 100 by 0.1). Without labeled OOD (or ID) the balanced accuracy is undefined and
   the fixed ``scale`` is kept; ``tune_scale: false`` is the ablation with a fixed scale.
2. The decision (CLIPN ATD, Eq. 2-4, with visual-similarity weights Eq. 5-7 unless
   ``visual_weights: false``): a sample is predicted ID iff its best weighted class
   probability exceeds its (weighted) OOD probability.
3. The ``base`` strategy (least confidence by default) picks b among the predicted-ID samples.
   If fewer than b are predicted ID, all of them are queried and the rest of the budget goes
   to the other samples with the largest ID-minus-OOD margin (their score is that margin).

Recorded per round: the chosen scale and the tuning's balanced accuracy; the filter's
accuracy/precision/recall/F1 and the AUROC of the margin against the truth (by the loop).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osal_ray.clip.scores import tune_scale, vlpure_decision
from osal_ray.params import Params, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, get_strategy, register_strategy, top_k

BASE_STRATEGIES = ("uncertainty", "entropy", "margin", "random", "coreset", "ll")


@dataclass(frozen=True)
class VlpureParams(Params):
    """The ``base`` strategy (and its ``base_params``) run on the predicted-ID samples; CLIPN's
    ``visual_weights``; the scale: self-tuned (``tune_scale``, over ``scale_grid``, null: 0.1 .. 100
    by 0.1) or fixed at ``scale``."""

    base: str = "uncertainty"
    base_params: dict[str, Any] = field(default_factory=dict)
    visual_weights: bool = True
    tune_scale: bool = True
    scale: float = 100.0
    scale_grid: list[float] | None = None

    def check(self, where: str) -> None:
        if self.base not in BASE_STRATEGIES:
            refuse(where, "base", f"{self.base!r} is not one of {', '.join(BASE_STRATEGIES)}")
        self.base_resolved(where)
        if not self.scale > 0:
            refuse(where, "scale", "must be positive")
        if self.scale_grid is not None and (not self.scale_grid or min(self.scale_grid) <= 0):
            refuse(where, "scale_grid", "must be null (0.1 .. 100 by 0.1) or a list of positive scales")

    def base_resolved(self, where: str = "strategy_params.vlpure") -> Params:
        """The base strategy's typed parameters (errors name ``<where>.base_params.<key>``)."""
        return get_strategy(self.base).params_type.build(self.base_params, f"{where}.base_params")


def _clip_columns(params: VlpureParams) -> tuple[str, ...]:
    return ("clip_cos_yes", "clip_cos_no") + (("clip_cos_visual",) if params.visual_weights else ())


def _columns(params: VlpureParams) -> tuple[str, ...]:
    base = get_strategy(params.base).required_columns(params.base_resolved())
    return _clip_columns(params) + tuple(c for c in base if c not in _clip_columns(params))


def _networks(params: VlpureParams) -> dict[str, NetworkOptions]:
    return get_strategy(params.base).network_options(params.base_resolved())


@register_strategy("vlpure", columns=_columns, needs_labeled=True, params=VlpureParams, networks=_networks)
def vlpure(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """VLPure-AL: CLIPN purity (visual weights, self-tuned scale), then the base strategy on the predicted-ID."""
    params = context.params
    visual = params.visual_weights

    def sims(scores: PoolScores) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return scores["clip_cos_yes"], scores["clip_cos_no"], scores["clip_cos_visual"] if visual else None

    # A known class with no labeled sample has no visual prototype (its class mean is zero).
    labels = context.labeled.labels if context.labeled is not None else np.empty(0, dtype=np.int64)
    prototypes = np.isin(np.arange(context.num_known), labels[labels >= 0]) if visual else None
    scale, balanced_accuracy = params.scale, math.nan
    if params.tune_scale and len(labels):
        grid = None if params.scale_grid is None else np.asarray(params.scale_grid, dtype=float)
        best, balanced_accuracy = tune_scale(*sims(context.labeled.scores), labels >= 0, grid, prototypes)
        if math.isfinite(best):
            scale = best
    id_score, ood_score, predicted_id = vlpure_decision(*sims(pool), scale, prototypes)
    margin = id_score - ood_score
    candidates = np.flatnonzero(predicted_id)
    if len(candidates) >= budget:
        base = get_strategy(params.base)
        inner = base.select(pool.subset(candidates), budget, dataclasses.replace(context, params=params.base_resolved()))
        indices, scores = candidates[inner.indices], inner.scores
    else:
        extra = top_k(margin, budget - len(candidates), np.flatnonzero(~predicted_id), rng=context.rng)
        indices = np.concatenate([top_k(margin, len(candidates), candidates, rng=context.rng), extra])
        scores = margin[indices]
    return Selection(
        indices,
        scores,
        diagnostics={"id_margin": margin, "predicted_known": predicted_id},
        values={
            "scale": scale,
            "tuning_balanced_accuracy": balanced_accuracy,
            "n_predicted_id": float(len(candidates)),
            "n_filled": float(max(0, len(indices) - len(candidates))),
            "classes_without_prototype": float(0 if prototypes is None else (~prototypes).sum()),
        },
    )
