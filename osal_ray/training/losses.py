"""Losses: temperature-scaled, optionally class-weighted cross-entropy (JSOSAL Eq. 1-2)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from osal_ray.training.objective_params import WEIGHT_REDUCTIONS


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c = N / n_c over the whole training set; a class with no sample gets weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = len(labels) / counts[present]
    return weights




def temperature_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    class_weights: torch.Tensor | None = None,
    reduction: str = "weighted_mean",
) -> torch.Tensor:
    """Cross-entropy of softmax(logits / T), optionally class-weighted.

    With class weights, ``weighted_mean`` gives sum_i w_{y_i} CE_i / sum_i w_{y_i} (PyTorch's
    convention: the weights change the balance between classes, not the step size) and ``mean``
    gives (1/B) sum_i w_{y_i} CE_i, JSOSAL's Eq. 1 averaged over the batch: with w_c = N / n_c the
    mean weight is the number of classes present, so the step is that many times larger.
    """
    if class_weights is None or reduction == "weighted_mean":
        return F.cross_entropy(logits / temperature, targets, weight=class_weights)
    if reduction != "mean":
        raise ValueError(f"unknown class-weight reduction {reduction!r}; allowed: {', '.join(WEIGHT_REDUCTIONS)}")
    per_sample = F.cross_entropy(logits / temperature, targets, reduction="none")
    return (class_weights[targets] * per_sample).mean()


def ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Learning loss's pairwise ranking loss: pair sample i with sample B-1-i of the batch and ask
    the predicted losses to be ordered like the true ones, by at least ``margin``."""
    half = len(predicted) // 2
    if half == 0:
        return predicted.sum() * 0.0
    first, second = predicted[:half], predicted.flip(0)[:half]
    sign = torch.where(target[:half] > target.flip(0)[:half], 1.0, -1.0)
    return torch.clamp(margin - sign * (first - second), min=0).mean()
