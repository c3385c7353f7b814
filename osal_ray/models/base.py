"""The shape every network shares: features -> embedding -> linear head, and what it outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkOutput:
    """One forward pass: logits, penultimate embedding, intermediate feature maps, head outputs."""

    logits: torch.Tensor
    embedding: torch.Tensor
    intermediates: list[torch.Tensor]
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"logits": self.logits, "embedding": self.embedding, **self.extras}


class FeatureNetwork(nn.Module):
    """A classifier whose penultimate embedding and intermediate feature maps are exposed.

    Subclasses implement ``forward_features``; ``forward`` returns the logits of ``head``.
    Strategies that need embeddings (coreset) or intermediate features (learning loss) use
    ``forward_all``.
    """

    embedding_dim: int
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (embedding, intermediate feature maps) for a batch."""
        raise NotImplementedError

    def forward_all(self, x: torch.Tensor) -> NetworkOutput:
        """Logits, embedding and intermediate feature maps in one pass."""
        embedding, intermediates = self.forward_features(x)
        return NetworkOutput(self.head(embedding), embedding, intermediates)

    def forward(self, x: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; with ``all_outputs`` a dict of logits, embedding and head outputs.

        Training objectives that need more than logits call ``model(x, all_outputs=True)``
        (not ``forward_all``) so that DistributedDataParallel sees the call.
        """
        if all_outputs:
            return self.forward_all(x).as_dict()
        embedding, _ = self.forward_features(x)
        return self.head(embedding)
