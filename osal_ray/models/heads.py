"""Heads that wrap a backbone and add outputs beside its logits (learning loss, one-vs-all, ...).

A head is registered as ``factory(backbone, **kwargs) -> nn.Module`` whose ``forward_all``
returns a NetworkOutput with its extra outputs in ``extras``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from osal_ray.models.base import FeatureNetwork, NetworkOutput
from osal_ray.registry import Registry

HeadFactory = Callable[..., nn.Module]
HEADS: Registry[HeadFactory] = Registry("network head")


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Register ``factory(backbone: FeatureNetwork, sample_shape=..., **kwargs) -> nn.Module``.

    ``sample_shape`` is the shape of one input sample, for heads that size themselves from it.
    """
    return HEADS.decorator(name)


def attach_head(name: str, backbone: FeatureNetwork, **kwargs: Any) -> nn.Module:
    """Wrap ``backbone`` in the registered head ``name``."""
    return HEADS.get(name, "network head")(backbone, **kwargs)


class HeadNetwork(nn.Module):
    """A backbone plus extra outputs: ``forward`` gives the backbone's logits (or every output with
    ``all_outputs``), ``forward_all`` adds what ``extras`` computes from the backbone's outputs."""

    def __init__(self, backbone: FeatureNetwork) -> None:
        super().__init__()
        self.backbone = backbone

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_all(self, x: torch.Tensor) -> NetworkOutput:
        base = self.backbone.forward_all(x)
        return NetworkOutput(base.logits, base.embedding, base.intermediates, self.extras(base))

    def forward(self, x: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.forward_all(x).as_dict() if all_outputs else self.backbone(x)


class LossPredictionNetwork(HeadNetwork):
    """Learning loss (Yoo & Kweon, 2019): a module predicting the classifier's loss from its features.

    Each intermediate feature map is globally average-pooled and mapped to ``hidden`` units;
    the concatenation gives one scalar, ``extras["predicted_loss"]``. ``detach_features`` stops
    the module's gradient from reaching the backbone (the paper does so late in training).
    """

    def __init__(self, backbone: FeatureNetwork, hidden: int = 128, sample_shape: tuple[int, ...] = ()) -> None:
        super().__init__(backbone)
        self.detach_features = False
        channels = [_channels(t) for t in _probe(backbone, sample_shape)]
        self.branches = nn.ModuleList([nn.Linear(c, hidden) for c in channels])
        self.out = nn.Linear(hidden * len(channels), 1)

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        features = [f.detach() if self.detach_features else f for f in base.intermediates]
        pooled = [torch.relu(branch(_pool(f))) for branch, f in zip(self.branches, features)]
        return {"predicted_loss": self.out(torch.cat(pooled, dim=1)).squeeze(1)}


class OneVsAllNetwork(HeadNetwork):
    """EOAL's detector: the K+1 backbone plus K one-vs-all binary heads on its embedding.

    ``extras["ova_logits"]`` has shape (N, 2, K): for each known class, [negative, positive].
    """

    def __init__(self, backbone: FeatureNetwork, sample_shape: tuple[int, ...] = ()) -> None:
        super().__init__(backbone)
        self.num_known = backbone.head.out_features - 1
        self.ova = nn.Linear(backbone.embedding_dim, 2 * self.num_known)

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        return {"ova_logits": self.ova(base.embedding).view(len(base.embedding), 2, self.num_known)}


class ProjectionNetwork(HeadNetwork):
    """A self-supervised encoder: backbone embedding -> 2-layer projection, ``extras["projection"]`` L2-normalised."""

    def __init__(self, backbone: FeatureNetwork, dim: int = 128, sample_shape: tuple[int, ...] = ()) -> None:
        super().__init__(backbone)
        # The backbone's classifier layer never feeds the contrastive loss; frozen, so that
        # DistributedDataParallel (several Ray Train workers) does not wait for its gradients.
        backbone.head.requires_grad_(False)
        width = backbone.embedding_dim
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        return {"projection": torch.nn.functional.normalize(self.projection(base.embedding), dim=1)}


class MCDropoutNetwork(HeadNetwork):
    """Dropout before the classifier layer, trained with it on and sampled at scoring (MC dropout).

    Training and the accuracy evaluation see the usual network (dropout active in training mode
    only). ``extras["bald"]`` is the mutual information between the prediction and the dropout
    mask (BALD, Houlsby et al. 2011; Gal et al. 2017), estimated over ``samples`` masks. The masks
    are drawn from a fixed seed and shared by every sample of every batch: each mask is one network
    of the dropout ensemble, and a sample's score does not depend on the batch it is scored in.
    """

    def __init__(self, backbone: FeatureNetwork, p: float = 0.5, samples: int = 20, seed: int = 0,
                 sample_shape: tuple[int, ...] = ()) -> None:
        super().__init__(backbone)
        self.p, self.samples, self.seed = float(p), int(samples), int(seed)
        self.dropout = nn.Dropout(self.p)

    def forward(self, x: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        if all_outputs:
            return self.forward_all(x).as_dict()
        embedding, _ = self.backbone.forward_features(x)
        return self.backbone.head(self.dropout(embedding))

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        return {"bald": self.mutual_information(base.embedding)}

    def masks(self, width: int, device: torch.device) -> torch.Tensor:
        """(samples, width) inverted-dropout masks, the same for every call."""
        generator = torch.Generator().manual_seed(self.seed)
        keep = torch.rand(self.samples, width, generator=generator) >= self.p
        return (keep.float() / max(1.0 - self.p, 1e-12)).to(device)

    def mutual_information(self, embedding: torch.Tensor) -> torch.Tensor:
        """H[mean_t p_t] - mean_t H[p_t] over the dropout masks, in nats, per sample."""
        masks = self.masks(embedding.shape[1], embedding.device)
        log_p = torch.log_softmax(self.backbone.head(embedding.unsqueeze(0) * masks.unsqueeze(1)), dim=2)  # (T, N, K)
        p = log_p.exp()
        expected_entropy = -(p * log_p).sum(dim=2).mean(dim=0)
        mean_p = p.mean(dim=0)
        entropy_of_mean = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum(dim=1)
        return (entropy_of_mean - expected_entropy).clamp_min(0.0)


class PseudoClassNetwork(HeadNetwork):
    """E2OAL's classifier: the K-way backbone plus an open head of K + m logits on its embedding.

    ``extras["open_logits"]`` (N, K + m): the K known classes, then m pseudo-classes that the labeled
    unknowns are split into (``count``; 0: as many as the known classes).
    """

    def __init__(self, backbone: FeatureNetwork, count: int = 0, sample_shape: tuple[int, ...] = ()) -> None:
        super().__init__(backbone)
        self.num_known = backbone.head.out_features
        self.num_pseudo = int(count) if count else self.num_known
        self.open = nn.Linear(backbone.embedding_dim, self.num_known + self.num_pseudo)

    def extras(self, base: NetworkOutput) -> dict[str, torch.Tensor]:
        return {"open_logits": self.open(base.embedding)}


def _pool(feature: torch.Tensor) -> torch.Tensor:
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature


def _channels(feature: torch.Tensor) -> int:
    return feature.shape[1]


def _probe(backbone: FeatureNetwork, sample_shape: tuple[int, ...]) -> list[torch.Tensor]:
    """The intermediate feature maps of one dummy input, to size the branches."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        _, intermediates = backbone.forward_features(torch.zeros(2, *sample_shape))
    backbone.train(was_training)
    return intermediates


register_head("loss_prediction")(LossPredictionNetwork)
register_head("ova")(OneVsAllNetwork)
register_head("projection")(ProjectionNetwork)
register_head("mc_dropout")(MCDropoutNetwork)
register_head("pseudo_classes")(PseudoClassNetwork)
