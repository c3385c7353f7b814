"""A known-class probability calibrated on held-out evidence: the strategy's own past queries.

Every round a strategy records, for the samples it queries, the features its known-vs-unknown
decision used *when it chose them* (before their labels were known and before any network was
trained on them). Once labeled, those samples are held-out evidence of how the features relate
to being known: a logistic regression on them turns the features into a probability. Scores of
the labeled training samples themselves would not do: the networks have just been fitted to them.

Evidence from earlier rounds was scored by earlier networks, so it counts less: a sample queried
``age`` rounds ago weighs ``decay ** age``; and only the direction of each feature is trusted to
carry over (see ``fit_calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from osal_ray.strategies.base import LabeledScores

EVIDENCE_IDS, EVIDENCE_FEATURES, EVIDENCE_ROUNDS = "evidence_ids", "evidence_features", "evidence_rounds"
MIN_PER_OUTCOME = 3  # fewer known (or unknown) outcomes than this cannot fix a slope


@dataclass(frozen=True)
class Evidence:
    """Features of earlier queries at their query time, whether each turned out known, and its age."""

    features: np.ndarray
    known: np.ndarray
    age: np.ndarray

    def __len__(self) -> int:
        return len(self.known)


def gather_evidence(carry: Mapping[str, np.ndarray], labeled: LabeledScores | None, round_index: int) -> Evidence | None:
    """The carried query-time features of samples that now have a label (None before any)."""
    if EVIDENCE_IDS not in carry or labeled is None or not len(labeled.labels):
        return None
    ids = np.asarray(carry[EVIDENCE_IDS], dtype=np.int64)
    order = np.argsort(labeled.scores.ids)
    positions = np.minimum(np.searchsorted(labeled.scores.ids, ids, sorter=order), len(order) - 1)
    rows = order[positions]
    found = labeled.scores.ids[rows] == ids
    if not found.any():
        return None
    features = np.asarray(carry[EVIDENCE_FEATURES], dtype=np.float64)[found]
    age = round_index - 1 - np.asarray(carry[EVIDENCE_ROUNDS], dtype=np.int64)[found]
    return Evidence(features, labeled.labels[rows[found]] >= 0, np.maximum(age, 0))


def record_evidence(carry: Mapping[str, np.ndarray], ids: np.ndarray, features: np.ndarray, round_index: int) -> dict[str, np.ndarray]:
    """``carry`` with this round's queried ids and their features appended."""
    width = features.shape[1]
    old_ids = np.asarray(carry.get(EVIDENCE_IDS, np.empty(0, dtype=np.int64)), dtype=np.int64)
    old_features = np.asarray(carry.get(EVIDENCE_FEATURES, np.empty((0, width))), dtype=np.float64)
    old_rounds = np.asarray(carry.get(EVIDENCE_ROUNDS, np.empty(0, dtype=np.int64)), dtype=np.int64)
    if old_features.shape[1:] != (width,):
        old_ids, old_features, old_rounds = old_ids[:0], np.empty((0, width)), old_rounds[:0]
    return {
        **carry,
        EVIDENCE_IDS: np.concatenate([old_ids, np.asarray(ids, dtype=np.int64)]),
        EVIDENCE_FEATURES: np.concatenate([old_features, np.asarray(features, dtype=np.float64)]),
        EVIDENCE_ROUNDS: np.concatenate([old_rounds, np.full(len(ids), round_index, dtype=np.int64)]),
    }


def fit_calibration(evidence: Evidence | None, decay: float, strength: float = 3.0):
    """A function features -> P(known), or None when the evidence cannot support one.

    A logistic regression on standardised features whose slopes are constrained to be >= 0: each
    feature is built so that larger means "more likely known" (a higher mixture posterior, a
    larger known-vs-unknown logit margin, a more confident classifier). The networks are
    retrained every round, so last round's evidence describes networks that no longer exist; a
    slope learnt from them may not carry over, but its sign does, and the constraint keeps a
    feature from being turned against its meaning (a fitted negative slope flipped whole
    rounds to unknowns). The penalty is ``1 / strength`` x |slopes|^2 / 2 per unit of evidence
    weight; both outcomes need ``MIN_PER_OUTCOME`` samples.
    """
    if evidence is None:
        return None
    known = evidence.known
    if known.sum() < MIN_PER_OUTCOME or (~known).sum() < MIN_PER_OUTCOME:
        return None
    from scipy.optimize import minimize

    weight = decay ** evidence.age.astype(np.float64)
    weight = weight / weight.mean()
    mean = np.average(evidence.features, axis=0, weights=weight)
    std = np.sqrt(np.average((evidence.features - mean) ** 2, axis=0, weights=weight))
    std = np.where(std > 1e-9, std, 1.0)
    x = (evidence.features - mean) / std
    sign = np.where(known, 1.0, -1.0)
    n, width = x.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (x @ theta[1:] + theta[0])
        value = np.logaddexp(0.0, -margin)
        grad_margin = -weight * sign * _sigmoid(-margin)
        total = float((weight * value).sum()) + 0.5 / strength * float(theta[1:] @ theta[1:])
        gradient = np.concatenate([[grad_margin.sum()], x.T @ grad_margin + theta[1:] / strength])
        return total, gradient

    base_rate = np.clip(np.average(known, weights=weight), 1e-3, 1 - 1e-3)
    start = np.concatenate([[np.log(base_rate / (1 - base_rate))], np.zeros(width)])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0.0, None)] * width)
    theta = result.x

    def probability(features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - mean) / std
        return _sigmoid(z @ theta[1:] + theta[0])

    return probability


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))
