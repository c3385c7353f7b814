"""A linear classifier on frozen CLIP image embeddings (VLPure-AL Table 6, its DomainNet setup)."""

from __future__ import annotations

import torch
from torch import nn

from osal_ray.models.base import FeatureNetwork
from osal_ray.models.registry import register_model


class LinearProbe(FeatureNetwork):
    """The stored CLIP embedding is the feature; only the linear head learns."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return x, [x]


@register_model("clip_linear", input="clip_embedding")
def clip_linear(num_classes: int, in_channels: int, image_size: int) -> LinearProbe:
    return LinearProbe(num_classes, in_channels)
