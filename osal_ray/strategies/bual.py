"""BUAL (Zong et al., ECCV 2024, arXiv 2402.15198): bidirectional uncertainty.

Three networks: the K-way classifier (positive learning, its softmax p), a second K-way network
``negative`` trained by random-label negative learning on the labeled knowns and a random sample
of ``pool_sample`` unlabeled pool samples (objective ``negative_learning``: positive learning for
the first epochs, then -log(1 - p_j) of a random wrong class j), which pushes unknowns to
confident predictions while informative knowns stay uncertain; and, once unknowns are labeled,
the K+1 detector (auxiliary network).

With u the ``uncertainty`` measure made "larger is more certain" (max probability, top-two margin,
or negative entropy) and min-max normalised over the candidates:

- before any unknown is labeled: score = u(negative) + r x u(classifier);
- after: the samples the detector predicts unknown are dropped, and with t = the detector's
  unknown probability (normalised), score = t x u(negative) + r x (1 - t) x u(classifier);

r is the previous round's achieved precision (0 in the first query round). The b lowest scores
are queried.

Against the reference code: it sums the negative network's probabilities over checkpoints every
5 epochs of negative learning and stops when the selection is stable for 5 checks; here the final
network's probabilities are used. Its detector probabilities come from a second, differently
shuffled pass over the pool and are paired with the other scores by position, so they belong to
other samples; here every score is paired by sample id. A shortfall (fewer than b samples left
after dropping the predicted unknowns) is filled with the lowest unknown probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.params import positive_int, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.strategies.eaoa import min_max
from osal_ray.strategies.precision_target import previous_precision, remember_query
from osal_ray.training.objective_params import NegativeLearningParams

UNCERTAINTIES = ("confidence", "margin", "entropy")


@dataclass(frozen=True)
class BualParams(NegativeLearningParams):
    """BUAL: the negative network's share of negative-learning epochs (``nl_fraction``) and unlabeled
    ``pool_sample``, and the ``uncertainty`` measure (``confidence``: B-LC, ``margin``, ``entropy``)."""

    pool_sample: int = 5000
    uncertainty: str = "confidence"

    def check(self, where: str) -> None:
        super().check(where)
        if not positive_int(self.pool_sample):
            refuse(where, "pool_sample", "must be a positive integer")
        if self.uncertainty not in UNCERTAINTIES:
            refuse(where, "uncertainty", f"must be one of {', '.join(UNCERTAINTIES)}")


def _networks(params: BualParams) -> dict[str, NetworkOptions]:
    return {"negative": NetworkOptions(objective="negative_learning", pool_sample=params.pool_sample,
                                       objective_params={k: getattr(params, k) for k in NegativeLearningParams.names()})}


def certainty(probs: np.ndarray, measure: str) -> np.ndarray:
    """Larger is more certain: the max probability, the top-two margin, or sum p log p (negative entropy)."""
    p = np.asarray(probs, dtype=np.float64)
    if measure == "confidence":
        return p.max(axis=1)
    if measure == "margin":
        top = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.hstack([np.zeros((len(p), 1)), p])
        return top[:, 1] - top[:, 0]
    return (p * np.log(p + 1e-10)).sum(axis=1)


@register_strategy("bual", columns=("probs", "neg_probs", "det_pred", "det_unknown_prob"), needs_labeled=True,
                   params=BualParams, networks=_networks)
def bual(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """BUAL: the lowest bidirectional certainty (negative-learning network, classifier, detector's unknown probability)."""
    params: BualParams = context.params
    labeled = context.labeled
    has_unknown = labeled is not None and bool((labeled.labels < 0).any())
    keep = np.asarray(pool["det_pred"]) < context.num_known if has_unknown else np.ones(len(pool), dtype=bool)
    rows = np.flatnonzero(keep)
    precision = previous_precision(context.carry, labeled)
    ratio = precision if precision is not None else 0.0
    negative = min_max(certainty(np.asarray(pool["neg_probs"])[rows], params.uncertainty))
    positive = min_max(certainty(np.asarray(pool["probs"])[rows], params.uncertainty))
    score = np.full(len(pool), np.nan)
    if has_unknown:
        unknown = min_max(np.asarray(pool["det_unknown_prob"])[rows])
        score[rows] = unknown * negative + ratio * (1.0 - unknown) * positive
    else:
        score[rows] = negative + ratio * positive
    chosen = top_k(-score, budget, rows, rng=context.rng)
    extra = top_k(-np.asarray(pool["det_unknown_prob"], dtype=np.float64), budget - len(chosen), np.flatnonzero(~keep),
                  rng=context.rng)
    chosen = np.concatenate([chosen, extra])
    values = {"ratio": float(ratio), "n_filled": float(len(extra))}
    return Selection(chosen, score[chosen], diagnostics={"predicted_known": keep}, values=values,
                     carry=remember_query(context.carry, pool.ids[chosen]))
