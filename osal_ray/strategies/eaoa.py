"""EAOA (Zong et al., 2025, arXiv 2502.19691): epistemic and aleatoric uncertainty from energies.

- Epistemic (is it known?): the K+1 detector's energy -logsumexp(known logits) + softplus(unknown
  logit), stabilised by a neighbourhood energy: each labeled known sample votes for its
  ``neighbours`` most similar pool samples (cosine, detector embeddings); a pool sample's energy is
  -logsumexp of its per-class vote counts. Each energy is min-max normalised and fitted with a
  2-component GaussianMixture (max_iter 10, tol 1e-2, reg_covar 5e-4, as LfOSA); the known
  probability is the product of the two low-energy posteriors.
- Aleatoric (is it informative?): the target classifier's energy gap, logsumexp of its logits
  without the predicted class minus logsumexp of all (``energy_gap``), normalised, the posterior of
  the high component of its 2-component mixture.
- Per class predicted by the classifier: the k x ceil(b/K) most likely known, of which the ceil(b/K)
  most informative (``quotas``); shuffled and cut to b. k starts at ``k`` and follows the previous
  round's achieved precision towards ``target_precision`` (``precision_target.adapt_multiplier``).

Against the reference code: its reverse-neighbour search uses all labeled samples (the unknown
column is then dropped), so only the labeled knowns count, as here; it returns fewer than b when a
class has too few samples (torch.topk would fail first when a class has fewer than k x ceil(b/K));
here a class gives what it has and the shortfall is filled with the most likely known of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.params import positive_int, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy
from osal_ray.strategies.mixtures import LFOSA_GMM_OPTIONS, MixtureSettings, fit_class
from osal_ray.strategies.precision_target import (
    adapt_multiplier,
    carried_value,
    previous_precision,
    remember_query,
)
from osal_ray.strategies.quotas import class_quota, fill_shortfall, per_class_picks
from osal_ray.training.objective_params import EnergyLossParams

GMM = MixtureSettings("gmm", dict(LFOSA_GMM_OPTIONS), fit_sample_size=None, backend="sklearn")


@dataclass(frozen=True)
class PrecisionTargetParams(EnergyLossParams):
    """EAOA: the detector's energy loss, the candidate multiplier ``k`` (its start), moved by ``step``
    when the previous round's precision is off ``target_precision`` by more than ``tolerance``, and the
    ``neighbours`` each labeled known votes for."""

    k: float = 5.0
    step: float = 1.0
    tolerance: float = 0.05
    target_precision: float = 0.6
    neighbours: int = 250

    def check(self, where: str) -> None:
        super().check(where)
        if not self.k >= 1:
            refuse(where, "k", "must be >= 1 (the candidate set is k x the per-class quota)")
        if not self.step >= 0:
            refuse(where, "step", "must be >= 0")
        if not self.tolerance >= 0:
            refuse(where, "tolerance", "must be >= 0")
        if not 0.0 <= self.target_precision <= 1.0:
            refuse(where, "target_precision", "must be in [0, 1]")
        if not positive_int(self.neighbours):
            refuse(where, "neighbours", "must be a positive integer")


def min_max(values: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min); zeros for a constant array."""
    x = np.asarray(values, dtype=np.float64)
    span = np.ptp(x) if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def high_posterior(values: np.ndarray, seed: int) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component GMM of the min-max normalised values."""
    return fit_class(min_max(values), GMM, seed).probability


def neighbour_votes(pool_embedding: np.ndarray, labeled_embedding: np.ndarray, labels: np.ndarray, num_known: int,
                    neighbours: int, chunk: int = 256) -> np.ndarray:
    """(N, K) counts: how many labeled samples of each known class have the pool sample among their
    ``neighbours`` most cosine-similar pool samples (labels < 0 are ignored)."""
    pool = _unit(pool_embedding)
    votes = np.zeros((len(pool), num_known))
    rows = np.flatnonzero((labels >= 0) & (labels < num_known))
    reference = _unit(labeled_embedding)[rows]
    n = min(neighbours, len(pool))
    for start in range(0, len(rows), chunk):
        sims = reference[start : start + chunk] @ pool.T
        nearest = np.argpartition(-sims, n - 1, axis=1)[:, :n] if n < len(pool) else np.tile(np.arange(len(pool)), (len(sims), 1))
        classes = np.repeat(labels[rows[start : start + chunk]], n)
        np.add.at(votes, (nearest.ravel(), classes), 1.0)
    return votes


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _networks(params: PrecisionTargetParams) -> dict[str, NetworkOptions]:
    return {"detector": NetworkOptions(objective="energy_margin",
                                       objective_params={k: getattr(params, k) for k in EnergyLossParams.names()})}


@register_strategy("eaoa", columns=("det_energy", "det_embedding", "energy_gap", "probs"), needs_labeled=True,
                   params=PrecisionTargetParams, networks=_networks)
def eaoa(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """EAOA: per predicted class, the most aleatoric-uncertain of the k x ceil(b/K) most likely known by energy; k tracks a precision target."""
    from scipy.special import logsumexp

    params: PrecisionTargetParams = context.params
    seed = int(context.rng.integers(2**31 - 1))
    known = 1.0 - high_posterior(pool["det_energy"], seed)  # the low-energy component
    labeled = context.labeled
    if labeled is not None and (labeled.labels >= 0).any():
        votes = neighbour_votes(pool["det_embedding"], labeled.scores["det_embedding"], labeled.labels,
                                context.num_known, params.neighbours)
        known = known * (1.0 - high_posterior(-logsumexp(votes, axis=1), seed + 1))
    informative = high_posterior(pool["energy_gap"], seed + 2)

    precision = previous_precision(context.carry, labeled)
    k = adapt_multiplier(carried_value(context.carry, "k", params.k), precision, params.target_precision,
                         params.step, params.tolerance)
    quota = class_quota(budget, context.num_known)
    predicted = np.asarray(pool["probs"]).argmax(axis=1)
    chosen, candidates = per_class_picks(predicted, known, informative, context.num_known, quota * int(k), quota, budget,
                                         context.rng)
    chosen, n_filled = fill_shortfall(chosen, known, budget, context.rng)
    values = {"k": float(k), "n_filled": float(n_filled), "n_candidates": float(candidates.sum())}
    if precision is not None:
        values["previous_precision"] = precision
    return Selection(chosen, informative[chosen], diagnostics={"known_probability": known, "candidates": candidates},
                     values=values, carry=remember_query(context.carry, pool.ids[chosen], k=k))
