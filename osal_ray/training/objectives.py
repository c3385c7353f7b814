"""Training objectives: what a network minimises each batch (and prepares each epoch).

``cross_entropy`` trains the classifier and the K+1 detector (temperature and class weights);
strategies that need other training (learning loss, EOAL's one-vs-all heads, a self-supervised
encoder) register their objective here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from osal_ray.registry import Registry
from osal_ray.training.losses import inverse_frequency_weights, temperature_cross_entropy


class Objective:
    """The loss of one batch; ``start_epoch`` may refresh state from the whole training set."""

    def __init__(self, params: Mapping[str, Any], num_outputs: int, labels: np.ndarray, device: torch.device,
                 generator: torch.Generator) -> None:
        self.params = dict(params)
        self.num_outputs = num_outputs
        self.device = device
        self.generator = generator

    def start_epoch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int, epochs: int) -> None:
        """Called before each epoch with the whole (local) training set."""

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


ObjectiveFactory = Callable[..., Objective]
OBJECTIVES: Registry[ObjectiveFactory] = Registry("training objective")


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Register an Objective subclass (or factory with its constructor's signature)."""
    return OBJECTIVES.decorator(name)


@register_objective("cross_entropy")
class CrossEntropy(Objective):
    """Cross-entropy of softmax(logits / temperature), optionally weighted w_c = N / n_c (JSOSAL Eq. 1-2)."""

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.temperature = float(self.params.get("temperature", 1.0))
        self.weights = None
        if self.params.get("class_weights", "none") == "inverse_frequency":
            weights = inverse_frequency_weights(labels, num_outputs)
            self.weights = torch.tensor(weights, dtype=torch.float32, device=device)

    def loss(self, model, x, y):
        return temperature_cross_entropy(model(x), y, self.temperature, self.weights)
