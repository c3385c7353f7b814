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
from typing import Any, Mapping

import numpy as np

from osal_ray.clip.scores import tune_scale, vlpure_decision
from osal_ray.errors import InputError
from osal_ray.strategies.base import (
    NetworkOptions,
    PoolScores,
    QueryContext,
    Selection,
    get_strategy,
    register_strategy,
    top_k,
)

BASE_STRATEGIES = ("uncertainty", "entropy", "margin", "random", "coreset", "ll")
VLPURE_DEFAULTS = {
    "base": "uncertainty",
    "base_params": {},
    "visual_weights": True,
    "tune_scale": True,
    "scale": 100.0,
    "scale_grid": None,
}


def _clip_columns(params: Mapping[str, Any]) -> tuple[str, ...]:
    return ("clip_cos_yes", "clip_cos_no") + (("clip_cos_visual",) if params["visual_weights"] else ())


def _columns(params: Mapping[str, Any]) -> tuple[str, ...]:
    base = get_strategy(params["base"]).required_columns(params["base_params"])
    return _clip_columns(params) + tuple(c for c in base if c not in _clip_columns(params))


def _networks(params: Mapping[str, Any]) -> dict[str, NetworkOptions]:
    return get_strategy(params["base"]).network_options(params["base_params"])


def _check(params: Mapping[str, Any]) -> None:
    if params["base"] not in BASE_STRATEGIES:
        raise InputError("strategy_params.vlpure.base", f"{params['base']!r} is not one of {', '.join(BASE_STRATEGIES)}")
    if not isinstance(params["base_params"], dict):
        raise InputError("strategy_params.vlpure.base_params", "must be a mapping of the base strategy's parameters")
    get_strategy(params["base"]).resolve_params(params["base_params"])
    for key in ("visual_weights", "tune_scale"):
        if not isinstance(params[key], bool):
            raise InputError(f"strategy_params.vlpure.{key}", "must be true or false")
    if not params["scale"] > 0:
        raise InputError("strategy_params.vlpure.scale", "must be positive")
    grid = params["scale_grid"]
    if grid is not None and (not isinstance(grid, list) or not grid or min(grid) <= 0):
        raise InputError("strategy_params.vlpure.scale_grid", "must be null (0.1 .. 100 by 0.1) or a list of positive scales")


@register_strategy("vlpure", columns=_columns, needs_labeled=True, defaults=VLPURE_DEFAULTS, networks=_networks, check=_check)
def vlpure(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """VLPure-AL: CLIPN purity (visual weights, self-tuned scale), then the base strategy on the predicted-ID."""
    params = context.params
    visual = params["visual_weights"]

    def sims(scores: PoolScores) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return scores["clip_cos_yes"], scores["clip_cos_no"], scores["clip_cos_visual"] if visual else None

    # A known class with no labeled sample has no visual prototype (its class mean is zero).
    labels = context.labeled.labels if context.labeled is not None else np.empty(0, dtype=np.int64)
    prototypes = np.isin(np.arange(context.num_known), labels[labels >= 0]) if visual else None
    scale, balanced_accuracy = float(params["scale"]), math.nan
    if params["tune_scale"] and len(labels):
        grid = None if params["scale_grid"] is None else np.asarray(params["scale_grid"], dtype=float)
        best, balanced_accuracy = tune_scale(*sims(context.labeled.scores), labels >= 0, grid, prototypes)
        if math.isfinite(best):
            scale = best
    id_score, ood_score, predicted_id = vlpure_decision(*sims(pool), scale, prototypes)
    margin = id_score - ood_score
    candidates = np.flatnonzero(predicted_id)
    if len(candidates) >= budget:
        base = get_strategy(params["base"])
        inner = base.select(pool.subset(candidates), budget, dataclasses.replace(context, params=params["base_params"]))
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
