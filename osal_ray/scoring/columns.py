"""Score columns: what the scoring pass can compute, and what each one is computed from.

A strategy declares the column names it needs; the pass loads only the networks those
columns name, reads only the stored pool columns they read, and returns only those columns.
A column is computed from one network's forward pass, from stored pool columns (such as a
cached CLIP image embedding), and from per-round context arrays the driver prepares (such as
class-mean embeddings of the labeled samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from osal_ray.data.vector_store import FEATURES
from osal_ray.models.base import NetworkOutput
from osal_ray.registry import Registry


@dataclass(frozen=True)
class ColumnInputs:
    """What a column may be computed from, for one batch."""

    outputs: Mapping[str, NetworkOutput]
    stored: Mapping[str, torch.Tensor]
    context: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ScoreColumn:
    """A per-sample column, the network it needs (if any), the stored columns and context it reads."""

    name: str
    compute: Callable[[ColumnInputs], torch.Tensor]
    description: str
    network: str | None = None
    reads: tuple[str, ...] = ()
    context: tuple[str, ...] = ()


COLUMNS: Registry[ScoreColumn] = Registry("score column")


def register_column(
    name: str, description: str, *, network: str | None = None, reads: tuple[str, ...] = (), context: tuple[str, ...] = ()
) -> Callable[[Callable[[ColumnInputs], torch.Tensor]], Callable[[ColumnInputs], torch.Tensor]]:
    """Register ``compute(ColumnInputs) -> Tensor`` as column ``name``."""

    def register(fn: Callable[[ColumnInputs], torch.Tensor]) -> Callable[[ColumnInputs], torch.Tensor]:
        COLUMNS.add(name, ScoreColumn(name, fn, description, network, tuple(reads), tuple(context)))
        return fn

    return register


def networks_for(columns: Iterable[str]) -> set[str]:
    """The networks that must be trained and loaded to compute ``columns``."""
    return {c.network for c in map(COLUMNS.get, columns) if c.network is not None}


def stored_columns_for(columns: Iterable[str]) -> set[str]:
    """The stored pool columns (besides the image) that ``columns`` read."""
    return {name for c in map(COLUMNS.get, columns) for name in c.reads}


def context_for(columns: Iterable[str]) -> set[str]:
    """The per-round context arrays that ``columns`` need from the driver."""
    return {name for c in map(COLUMNS.get, columns) for name in c.context}


def as_tensors(arrays: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.array(v), device=device) for k, v in arrays.items()}


def _classifier(inputs: ColumnInputs) -> NetworkOutput:
    return inputs.outputs["classifier"]


def _detector(inputs: ColumnInputs) -> NetworkOutput:
    return inputs.outputs["detector"]


@register_column("probs", "softmax class probabilities of the K-way classifier, (N, K)", network="classifier")
def _probs(inputs: ColumnInputs) -> torch.Tensor:
    return torch.softmax(_classifier(inputs).logits, dim=1)


@register_column("entropy", "entropy (nats) of the classifier's class probabilities", network="classifier")
def _entropy(inputs: ColumnInputs) -> torch.Tensor:
    log_p = torch.log_softmax(_classifier(inputs).logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@register_column("energy", "the classifier's energy score, logsumexp of its logits (larger: more like the known classes)", network="classifier")
def _energy(inputs: ColumnInputs) -> torch.Tensor:
    return torch.logsumexp(_classifier(inputs).logits, dim=1)


@register_column("embedding", "the classifier's penultimate-layer embedding, (N, D)", network="classifier")
def _embedding(inputs: ColumnInputs) -> torch.Tensor:
    return _classifier(inputs).embedding


@register_column("det_pred", "the K+1 detector's predicted class (argmax; K means unknown)", network="detector")
def _det_pred(inputs: ColumnInputs) -> torch.Tensor:
    return _detector(inputs).logits.argmax(dim=1)


@register_column("det_mav", "maximum activation value: the detector's largest raw logit (LfOSA, JSOSAL Eq. 3)", network="detector")
def _det_mav(inputs: ColumnInputs) -> torch.Tensor:
    return _detector(inputs).logits.max(dim=1).values


@register_column("det_known_margin", "largest known-class logit minus the unknown logit of the detector", network="detector")
def _det_known_margin(inputs: ColumnInputs) -> torch.Tensor:
    logits = _detector(inputs).logits
    return logits[:, :-1].max(dim=1).values - logits[:, -1]


@register_column("predicted_loss", "the learning-loss module's predicted loss of the classifier", network="classifier")
def _predicted_loss(inputs: ColumnInputs) -> torch.Tensor:
    return _classifier(inputs).extras["predicted_loss"]


@register_column(
    "bald", "BALD: mutual information between prediction and MC-dropout mask of the classifier (nats)", network="classifier"
)
def _bald(inputs: ColumnInputs) -> torch.Tensor:
    return _classifier(inputs).extras["bald"]


@register_column("det_embedding", "the detector's penultimate-layer embedding, (N, D)", network="detector")
def _det_embedding(inputs: ColumnInputs) -> torch.Tensor:
    return _detector(inputs).embedding


@register_column(
    "ova_closed_entropy", "EOAL closed-set entropy: mean binary entropy of the K one-vs-all heads, in bits", network="detector"
)
def _ova_closed_entropy(inputs: ColumnInputs) -> torch.Tensor:
    p = torch.softmax(_detector(inputs).extras["ova_logits"], dim=1)
    return -(p * torch.log(p + 1e-8)).sum(dim=1).mean(dim=1) / float(np.log(2.0))


@register_column("ssl_embedding", "the self-supervised encoder's L2-normalised projection, (N, D)", network="ssl")
def _ssl_embedding(inputs: ColumnInputs) -> torch.Tensor:
    return inputs.outputs["ssl"].extras["projection"]


@register_column("det_energy", "EAOA's detector energy: -logsumexp of the K known logits + softplus of the unknown logit "
                               "(lower: more like the known classes)", network="detector")
def _det_energy(inputs: ColumnInputs) -> torch.Tensor:
    logits = _detector(inputs).logits
    return -torch.logsumexp(logits[:, :-1], dim=1) + torch.nn.functional.softplus(logits[:, -1])


@register_column("energy_gap", "EAOA's aleatoric score: logsumexp of the classifier's logits without the predicted class "
                               "minus logsumexp of all of them, log(1 - max p) (larger: more ambiguous)", network="classifier")
def _energy_gap(inputs: ColumnInputs) -> torch.Tensor:
    logits = _classifier(inputs).logits
    top = torch.nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()
    return (torch.logsumexp(logits.masked_fill(top, float("-inf")), dim=1) - torch.logsumexp(logits, dim=1)).clamp_min(-1e4)


@register_column("open_logits", "E2OAL: the classifier's open head, K known then m pseudo-class logits, (N, D) with D = K + m",
                 network="classifier")
def _open_logits(inputs: ColumnInputs) -> torch.Tensor:
    return _classifier(inputs).extras["open_logits"]


@register_column("det_unknown_prob", "the K+1 detector's softmax probability of the unknown class K", network="detector")
def _det_unknown_prob(inputs: ColumnInputs) -> torch.Tensor:
    return torch.softmax(_detector(inputs).logits, dim=1)[:, -1]


@register_column("neg_probs", "BUAL: softmax class probabilities of the negative-learning network, (N, K)", network="negative")
def _neg_probs(inputs: ColumnInputs) -> torch.Tensor:
    return torch.softmax(inputs.outputs["negative"].logits, dim=1)


@register_column("features_embedding", "the frozen features column (features.extractor), L2-normalised, (N, D)",
                 reads=(FEATURES,))
def _features_embedding(inputs: ColumnInputs) -> torch.Tensor:
    return torch.nn.functional.normalize(inputs.stored[FEATURES].float(), dim=1)
