"""Score columns: what the scoring pass can compute, and which network each comes from.

A strategy declares the column names it needs; the pass loads only the networks those
columns name and returns only those columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from osal_ray.registry import Registry


@dataclass(frozen=True)
class NetworkOutput:
    """One network's forward pass on a batch."""

    logits: torch.Tensor
    embedding: torch.Tensor
    intermediates: list[torch.Tensor]


@dataclass(frozen=True)
class ScoreColumn:
    """A per-sample column computed from one network's output."""

    name: str
    network: str
    compute: Callable[[NetworkOutput], torch.Tensor]
    description: str


COLUMNS: Registry[ScoreColumn] = Registry("score column")


def register_column(name: str, network: str, description: str) -> Callable[[Callable[[NetworkOutput], torch.Tensor]], Callable[[NetworkOutput], torch.Tensor]]:
    """Register ``compute(NetworkOutput) -> Tensor`` as column ``name`` of ``network``."""

    def register(fn: Callable[[NetworkOutput], torch.Tensor]) -> Callable[[NetworkOutput], torch.Tensor]:
        COLUMNS.add(name, ScoreColumn(name, network, fn, description))
        return fn

    return register


def networks_for(columns: Iterable[str]) -> set[str]:
    """The networks that must be trained and loaded to compute ``columns``."""
    return {COLUMNS.get(name).network for name in columns}


@register_column("probs", "classifier", "softmax class probabilities of the K-way classifier, (N, K)")
def _probs(out: NetworkOutput) -> torch.Tensor:
    return torch.softmax(out.logits, dim=1)


@register_column("entropy", "classifier", "entropy (nats) of the classifier's class probabilities")
def _entropy(out: NetworkOutput) -> torch.Tensor:
    log_p = torch.log_softmax(out.logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@register_column("embedding", "classifier", "the classifier's penultimate-layer embedding, (N, D)")
def _embedding(out: NetworkOutput) -> torch.Tensor:
    return out.embedding


@register_column("det_pred", "detector", "the K+1 detector's predicted class (argmax; K means unknown)")
def _det_pred(out: NetworkOutput) -> torch.Tensor:
    return out.logits.argmax(dim=1)


@register_column("det_mav", "detector", "maximum activation value: the detector's largest raw logit (LfOSA, JSOSAL Eq. 3)")
def _det_mav(out: NetworkOutput) -> torch.Tensor:
    return out.logits.max(dim=1).values


@register_column("det_known_margin", "detector", "largest known-class logit minus the unknown logit of the detector")
def _det_known_margin(out: NetworkOutput) -> torch.Tensor:
    return out.logits[:, :-1].max(dim=1).values - out.logits[:, -1]
