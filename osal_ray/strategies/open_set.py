"""LfOSA and JSOSAL: known-class probability from per-class mixtures over the detector's MAVs.

- ``lfosa`` (Ning et al., CVPR 2022): GaussianMixture with the reference settings; global top-b
  by probability.
- ``jsosal`` (the JSOSAL paper, Eq. 3-7): BayesianGaussianMixture; keep the top-a by probability,
  then query the b with the highest classifier entropy among them.
- ``jsosal_no_entropy``: the paper's ablation (Figure 4), BGMM probability only, top-b.

Samples the detector predicts as unknown (class K) are not candidates. When fewer than b
candidates exist, the rest of the budget is filled from the rejected samples with the largest
known-vs-unknown logit margin (the reference fills with arbitrary zero-score samples); their
recorded score is NaN and ``n_filled`` counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from osal_ray.params import positive_int, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.strategies.mixtures import BgmmParams, GmmParams, MixtureParams, known_probability, resolve_jobs

DETECTOR_COLUMNS = ("det_pred", "det_mav", "det_known_margin")
# JSOSAL Eq. 1-2: the detector's cross-entropy is weighted w_c = N / n_c (LfOSA's is not).
WEIGHTED_DETECTOR = {"detector": NetworkOptions(objective_params={"class_weights": "inverse_frequency"})}


@dataclass(frozen=True)
class JsosalParams(BgmmParams):
    """The Bayesian mixture's parameters and the size of the top-a: ``a`` samples, or (``a`` null)
    ``a_multiple`` x b."""

    a: int | None = None
    a_multiple: float = 2.0

    def check(self, where: str) -> None:
        super().check(where)
        if self.a is not None and not positive_int(self.a):
            refuse(where, "a", "must be null (use a_multiple) or a positive integer count")
        if not self.a_multiple >= 1:
            refuse(where, "a_multiple", "must be >= 1 (a is at least b)")


def mixture_probability(pool: PoolScores, context: QueryContext) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per-class mixture posteriors of the predicted-known candidates (the mixture ``context.params`` is)."""
    params: MixtureParams = context.params
    predicted = np.asarray(pool["det_pred"])
    candidates = predicted < context.num_known
    seed = int(context.rng.integers(2**31 - 1))
    n_jobs = resolve_jobs(params.n_jobs, int(candidates.sum()), context.num_known)
    probability, counts = known_probability(predicted, np.asarray(pool["det_mav"]), context.num_known, params.settings(),
                                            seed, n_jobs)
    counts["n_candidates"] = float(candidates.sum())
    return probability, candidates, counts


def _finish(pool: PoolScores, budget: int, chosen: np.ndarray, scores: np.ndarray, candidates: np.ndarray,
            probability: np.ndarray, values: dict[str, float], marks: dict[str, np.ndarray],
            rng: np.random.Generator) -> Selection:
    extra = top_k(pool["det_known_margin"], budget - len(chosen), np.flatnonzero(~candidates), rng=rng)
    values["n_filled"] = float(len(extra))
    return Selection(
        np.concatenate([chosen, extra]),
        np.concatenate([scores, np.full(len(extra), math.nan)]),
        diagnostics={"known_probability": probability, "predicted_known": candidates, **marks},
        values=values,
    )


@register_strategy("lfosa", columns=DETECTOR_COLUMNS, params=GmmParams)
def lfosa(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """LfOSA: per-class GaussianMixture on MAVs; the b candidates most likely known."""
    return _most_likely_known(pool, budget, context)


def _most_likely_known(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    probability, candidates, values = mixture_probability(pool, context)
    chosen = top_k(probability, budget, np.flatnonzero(candidates), tiebreak=pool["det_mav"], rng=context.rng)
    return _finish(pool, budget, chosen, probability[chosen], candidates, probability, values, {}, context.rng)


@register_strategy("jsosal", columns=DETECTOR_COLUMNS + ("entropy",), params=JsosalParams, networks=WEIGHTED_DETECTOR)
def jsosal(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """JSOSAL: per-class Bayesian mixture on MAVs; keep the top-a most likely known, query the b of highest entropy."""
    probability, candidates, values = mixture_probability(pool, context)
    params = context.params
    a = params.a if params.a is not None else math.ceil(params.a_multiple * budget)
    a = max(int(a), budget)
    kept = top_k(probability, a, np.flatnonzero(candidates), tiebreak=pool["det_mav"], rng=context.rng)
    entropy = np.asarray(pool["entropy"])
    chosen = kept[top_k(entropy[kept], budget, rng=context.rng)]
    top_a = np.zeros(len(pool), dtype=bool)
    top_a[kept] = True
    values["a"] = float(a)
    return _finish(pool, budget, chosen, entropy[chosen], candidates, probability, values, {"top_a": top_a}, context.rng)


@register_strategy("jsosal_no_entropy", columns=DETECTOR_COLUMNS, params=BgmmParams, networks=WEIGHTED_DETECTOR)
def jsosal_no_entropy(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """JSOSAL without the entropy step (the paper's Figure 4 ablation): top-b by Bayesian-mixture probability."""
    return _most_likely_known(pool, budget, context)
