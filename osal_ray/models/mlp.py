"""A two-hidden-layer perceptron for small inputs such as the 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn

from osal_ray.models.base import FeatureNetwork
from osal_ray.models.registry import register_model


class MLP(FeatureNetwork):
    """Flatten -> Linear -> ReLU -> Linear -> ReLU -> head."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.embedding_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h1 = torch.relu(self.fc1(x.flatten(1)))
        h2 = torch.relu(self.fc2(h1))
        return h2, [h1, h2]


@register_model("mlp")
def mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 128) -> MLP:
    return MLP(num_classes, in_channels * image_size * image_size, hidden)
