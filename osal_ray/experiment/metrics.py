"""The papers' metrics: accuracy, precision, recall, AUBC, and AUROC of an open-set filter."""

from __future__ import annotations

import math

import numpy as np


def precision(is_known: np.ndarray) -> float:
    """Known-class fraction of one round's query batch (NaN for an empty batch)."""
    return float(np.mean(is_known)) if len(is_known) else math.nan


def recall(n_labeled_known: int, n_known_in_pool: int) -> float:
    """Labeled known samples so far (initial set included) over all known samples in the pool."""
    return n_labeled_known / n_known_in_pool if n_known_in_pool else math.nan


def aubc(budgets: np.ndarray, accuracies: np.ndarray) -> float:
    """Area under accuracy vs budget spent, trapezoidal, normalised by the budget range.

    Accuracies in [0, 1] give an AUBC in [0, 1]; a single point gives its accuracy.
    """
    budgets = np.asarray(budgets, dtype=np.float64)
    accuracies = np.asarray(accuracies, dtype=np.float64)
    if len(budgets) == 0:
        return math.nan
    order = np.argsort(budgets, kind="stable")
    budgets, accuracies = budgets[order], accuracies[order]
    span = budgets[-1] - budgets[0]
    if span <= 0:
        return float(accuracies[-1])
    area = np.sum((budgets[1:] - budgets[:-1]) * (accuracies[1:] + accuracies[:-1]) / 2.0)
    return float(area / span)


def auroc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the positive class (NaN if one class is absent)."""
    from sklearn.metrics import roc_auc_score

    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return math.nan
    return float(roc_auc_score(is_positive, np.asarray(scores, dtype=np.float64)))
