"""A small two-convolution network for 28x28 grayscale images (Fashion-MNIST)."""

from __future__ import annotations

import torch
from torch import nn

from osal_ray.models.base import FeatureNetwork
from osal_ray.models.registry import register_model


class SmallCNN(FeatureNetwork):
    """conv(32)-pool-conv(64)-pool-fc(embedding) -> head."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 32, embedding: int = 128) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2))
        side = image_size // 4
        self.fc = nn.Linear(2 * width * side * side, embedding)
        self.embedding_dim = embedding
        self.head = nn.Linear(embedding, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f1 = self.block1(x)
        f2 = self.block2(f1)
        embedding = torch.relu(self.fc(f2.flatten(1)))
        return embedding, [f1, f2]


@register_model("cnn")
def cnn(num_classes: int, in_channels: int, image_size: int, width: int = 32, embedding: int = 128) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, image_size, width, embedding)
