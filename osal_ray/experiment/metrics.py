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


def binary_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of a known-vs-unknown decision (NaN where undefined)."""
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    true_positive = float(np.sum(predicted & truth))
    precision_value = true_positive / predicted.sum() if predicted.any() else math.nan
    recall_value = true_positive / truth.sum() if truth.any() else math.nan
    if math.isnan(precision_value) or math.isnan(recall_value) or precision_value + recall_value == 0:
        f1 = math.nan if math.isnan(precision_value) or math.isnan(recall_value) else 0.0
    else:
        f1 = 2 * precision_value * recall_value / (precision_value + recall_value)
    accuracy = float(np.mean(predicted == truth)) if len(truth) else math.nan
    return {"accuracy": accuracy, "precision": precision_value, "recall": recall_value, "f1": f1}
