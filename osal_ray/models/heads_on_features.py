"""Small heads on frozen features (``features.extractor``): the practitioners' regime, trained in seconds.

Both read the stored ``features`` column (``in_channels`` is its dimension). ``linear`` is a linear
classifier whose embedding is the feature itself; ``mlp_head`` has one hidden layer, its embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from osal_ray.data.vector_store import FEATURES
from osal_ray.models.base import FeatureNetwork
from osal_ray.models.clip_linear import LinearProbe
from osal_ray.models.registry import register_model


class HiddenLayerHead(FeatureNetwork):
    """Linear -> ReLU -> head, on a feature vector."""

    def __init__(self, num_classes: int, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.embedding_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.relu(self.fc(x))
        return h, [h]


@register_model("linear", input=FEATURES)
def linear(num_classes: int, in_channels: int, image_size: int) -> LinearProbe:
    return LinearProbe(num_classes, in_channels)


@register_model("mlp_head", input=FEATURES)
def mlp_head(num_classes: int, in_channels: int, image_size: int, hidden: int = 256) -> HiddenLayerHead:
    return HiddenLayerHead(num_classes, in_channels, hidden)
