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
from typing import Any, Mapping

import numpy as np

from osal_ray.errors import InputError
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.strategies.mixtures import (
    BGMM_DEFAULT_OPTIONS,
    LFOSA_GMM_OPTIONS,
    MixtureSettings,
    known_probability,
    resolve_jobs,
)

DETECTOR_COLUMNS = ("det_pred", "det_mav", "det_known_margin")
# JSOSAL Eq. 1-2: the detector's cross-entropy is weighted w_c = N / n_c (LfOSA's is not).
WEIGHTED_DETECTOR = {"detector": NetworkOptions(objective_params={"class_weights": "inverse_frequency"})}
COMMON_DEFAULTS = {"n_jobs": None, "fit_sample_size": 50_000, "collapse_weight": 0.01, "min_separation": 2.0}


def check_mixture(name: str, kind: str):
    def check(params: Mapping[str, Any]) -> None:
        def fail(key: str, message: str) -> None:
            raise InputError(f"strategy_params.{name}.{key}", message)

        if params["n_jobs"] is not None and (not isinstance(params["n_jobs"], int) or params["n_jobs"] < 1):
            fail("n_jobs", "must be null (automatic) or a positive integer")
        if params["fit_sample_size"] is not None and (not isinstance(params["fit_sample_size"], int) or params["fit_sample_size"] < 100):
            fail("fit_sample_size", "must be null (fit on every sample) or an integer >= 100")
        if not 0.0 <= params["collapse_weight"] < 0.5:
            fail("collapse_weight", "must be in [0, 0.5)")
        if not params["min_separation"] >= 0:
            fail("min_separation", "must be >= 0 (Ashman's D; 0 never calls a small component collapsed)")
        if not isinstance(params["max_iter"], int) or params["max_iter"] < 1:
            fail("max_iter", "must be a positive integer")
        if params["tol"] <= 0:
            fail("tol", "must be positive")
        if params["reg_covar"] < 0:
            fail("reg_covar", "must be >= 0")
        if kind == "bgmm":
            if params["weight_concentration_prior_type"] not in ("dirichlet_process", "dirichlet_distribution"):
                fail("weight_concentration_prior_type", "must be dirichlet_process or dirichlet_distribution")
            for key in ("weight_concentration_prior", "mean_precision_prior"):
                if params[key] is not None and params[key] <= 0:
                    fail(key, "must be null (sklearn's default) or positive")
        if "a" in params:
            if params["a"] is not None and (not isinstance(params["a"], int) or params["a"] < 1):
                fail("a", "must be null (use a_multiple) or a positive integer count")
            if params["a_multiple"] < 1:
                fail("a_multiple", "must be >= 1 (a is at least b)")

    return check


def mixture_probability(pool: PoolScores, context: QueryContext, kind: str) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    params = context.params
    option_keys = LFOSA_GMM_OPTIONS if kind == "gmm" else BGMM_DEFAULT_OPTIONS
    settings = MixtureSettings(kind, {k: params[k] for k in option_keys}, params["fit_sample_size"],
                               params["collapse_weight"], params["min_separation"])
    predicted = np.asarray(pool["det_pred"])
    candidates = predicted < context.num_known
    seed = int(context.rng.integers(2**31 - 1))
    n_jobs = resolve_jobs(params["n_jobs"], int(candidates.sum()), context.num_known)
    probability, counts = known_probability(predicted, np.asarray(pool["det_mav"]), context.num_known, settings, seed, n_jobs)
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


@register_strategy(
    "lfosa", columns=DETECTOR_COLUMNS, defaults={**COMMON_DEFAULTS, **LFOSA_GMM_OPTIONS},
    check=check_mixture("lfosa", "gmm"),
)
def lfosa(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """LfOSA: per-class GaussianMixture on MAVs; the b candidates most likely known."""
    return _most_likely_known(pool, budget, context, "gmm")


def _most_likely_known(pool: PoolScores, budget: int, context: QueryContext, kind: str) -> Selection:
    probability, candidates, values = mixture_probability(pool, context, kind)
    chosen = top_k(probability, budget, np.flatnonzero(candidates), tiebreak=pool["det_mav"], rng=context.rng)
    return _finish(pool, budget, chosen, probability[chosen], candidates, probability, values, {}, context.rng)


@register_strategy(
    "jsosal", columns=DETECTOR_COLUMNS + ("entropy",),
    defaults={**COMMON_DEFAULTS, **BGMM_DEFAULT_OPTIONS, "a": None, "a_multiple": 2.0},
    networks=WEIGHTED_DETECTOR, check=check_mixture("jsosal", "bgmm"),
)
def jsosal(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """JSOSAL: per-class Bayesian mixture on MAVs; keep the top-a most likely known, query the b of highest entropy."""
    probability, candidates, values = mixture_probability(pool, context, "bgmm")
    params = context.params
    a = params["a"] if params["a"] is not None else math.ceil(params["a_multiple"] * budget)
    a = max(int(a), budget)
    kept = top_k(probability, a, np.flatnonzero(candidates), tiebreak=pool["det_mav"], rng=context.rng)
    entropy = np.asarray(pool["entropy"])
    chosen = kept[top_k(entropy[kept], budget, rng=context.rng)]
    top_a = np.zeros(len(pool), dtype=bool)
    top_a[kept] = True
    values["a"] = float(a)
    return _finish(pool, budget, chosen, entropy[chosen], candidates, probability, values, {"top_a": top_a}, context.rng)


@register_strategy(
    "jsosal_no_entropy", columns=DETECTOR_COLUMNS, defaults={**COMMON_DEFAULTS, **BGMM_DEFAULT_OPTIONS},
    networks=WEIGHTED_DETECTOR, check=check_mixture("jsosal_no_entropy", "bgmm"),
)
def jsosal_no_entropy(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """JSOSAL without the entropy step (the paper's Figure 4 ablation): top-b by Bayesian-mixture probability."""
    return _most_likely_known(pool, budget, context, "bgmm")
