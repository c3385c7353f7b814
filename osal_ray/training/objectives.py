"""Training objectives: what a network minimises each batch (and prepares each epoch).

``cross_entropy`` trains the classifier and the K+1 detector (temperature and class weights);
strategies that need other training (learning loss, EOAL's one-vs-all heads, a self-supervised
encoder) register their objective here.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from osal_ray.params import NoParams, Params
from osal_ray.registry import Registry
from osal_ray.training.losses import inverse_frequency_weights, ranking_loss, temperature_cross_entropy
from osal_ray.training.objective_params import CrossEntropyParams, EntropicOpenSetParams, LossPredictionParams, SimCLRParams


class Objective:
    """The loss of one batch; ``start_epoch`` may refresh state from the whole training set.

    ``params_type`` is the objective's parameter dataclass (``osal_ray.training.objective_params``);
    the constructor takes an instance of it (or a mapping, built and checked into one).
    """

    params_type: ClassVar[type[Params]] = NoParams
    needs_images: ClassVar[bool] = False  # e.g. contrastive views: no cached-feature input

    def __init__(self, params: "Params | Mapping[str, Any]", num_outputs: int, labels: np.ndarray, device: torch.device,
                 generator: torch.Generator) -> None:
        self.params = type(self).params_type.build(params, f"objective {type(self).__name__}")
        self.num_outputs = num_outputs
        self.device = device
        self.generator = generator

    def start_epoch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int, epochs: int) -> None:
        """Called before each epoch with the whole (local) training set."""

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The batch loss; ``index`` holds the samples' positions in the training set."""
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("training objective")


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Register an Objective subclass under ``name`` (its ``params_type`` declares its parameters)."""
    return OBJECTIVES.decorator(name)


@register_objective("cross_entropy")
class CrossEntropy(Objective):
    """Cross-entropy of softmax(logits / temperature), optionally weighted w_c = N / n_c (JSOSAL Eq. 1-2)."""

    params_type = CrossEntropyParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.temperature = self.params.temperature
        self.reduction = self.params.class_weight_reduction
        self.weights = None
        if self.params.class_weights == "inverse_frequency":
            weights = inverse_frequency_weights(labels, num_outputs)
            self.weights = torch.tensor(weights, dtype=torch.float32, device=device)

    def loss(self, model, x, y, index):
        return temperature_cross_entropy(model(x), y, self.temperature, self.weights, self.reduction)


@register_objective("learning_loss")
class LearningLoss(Objective):
    """Cross-entropy plus ``weight`` x the ranking loss of the loss-prediction module (Yoo & Kweon, 2019).

    After ``detach_fraction`` of the epochs the module no longer back-propagates into the
    backbone, as in the paper (epoch 120 of 200).
    """

    params_type = LossPredictionParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.weight = self.params.weight
        self.margin = self.params.margin
        self.detach_fraction = self.params.detach_fraction

    def start_epoch(self, model, x, y, epoch, epochs):
        getattr(model, "module", model).detach_features = epoch >= int(self.detach_fraction * epochs)

    def loss(self, model, x, y, index):
        out = model(x, all_outputs=True)
        per_sample = torch.nn.functional.cross_entropy(out["logits"], y, reduction="none")
        return per_sample.mean() + self.weight * ranking_loss(out["predicted_loss"], per_sample.detach(), self.margin)


@register_objective("eoal")
class EntropicOpenSet(Objective):
    """EOAL's detector objective (Safaei et al., AAAI 2024).

    Cross-entropy of the K+1 logits / T; the entropic one-vs-all loss on the K binary heads
    (known samples: positive for their class, hardest negative among the others, both weighted
    1 - alpha once unknowns exist; queried unknowns: every head pushed towards 0.5, weight
    alpha / K); and, once unknowns exist, ``cluster_weight`` x (0.1 intra + 1.0 inter) cluster
    loss that pulls each unknown towards its FINCH cluster centre and away from the others.
    Clusters of the unknowns' embeddings are recomputed at the start of every epoch.
    """

    params_type = EntropicOpenSetParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.k = num_outputs - 1
        self.temperature = self.params.temperature
        self.alpha = self.params.pareto_alpha
        self.cluster_weight = self.params.cluster_weight
        self.clusters_per_class = self.params.clusters_per_class
        self.unknown = torch.as_tensor(labels == self.k)
        self.has_unknown = bool(self.unknown.any())
        self.centres: torch.Tensor | None = None
        self.cluster_of = torch.full((len(labels),), -1, dtype=torch.long)

    @torch.no_grad()
    def start_epoch(self, model, x, y, epoch, epochs):
        if not self.has_unknown:
            return
        from osal_ray.clustering import cluster_centres, finch_clusters

        module = getattr(model, "module", model)
        was_training = module.training
        module.eval()
        positions = torch.nonzero(self.unknown).flatten()
        embeddings = torch.cat([
            module(x[positions[i : i + 512]].to(self.device), all_outputs=True)["embedding"].cpu()
            for i in range(0, len(positions), 512)
        ]).numpy()
        module.train(was_training)
        labels = finch_clusters(embeddings, self.clusters_per_class * self.k)
        self.centres = torch.as_tensor(cluster_centres(embeddings, labels), dtype=torch.float32, device=self.device)
        self.cluster_of[positions] = torch.as_tensor(labels)

    def loss(self, model, x, y, index):
        out = model(x, all_outputs=True)
        loss = torch.nn.functional.cross_entropy(out["logits"] / self.temperature, y)
        loss = loss + self._open_loss(torch.softmax(out["ova_logits"], dim=1), y)
        unknown = y == self.k
        if self.has_unknown and self.centres is not None and bool(unknown.any()) and len(self.centres) > 1:
            clusters = self.cluster_of[index.cpu()][unknown.cpu()].to(self.device)
            loss = loss + self.cluster_weight * cluster_loss(out["embedding"][unknown], self.centres, clusters)
        return loss

    def _open_loss(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """p: (N, 2, K) softmax over [negative, positive] for each known class."""
        eps = 1e-8
        known = y < self.k
        scale = (1 - self.alpha) if self.has_unknown else 1.0
        terms = []
        if bool(known.any()):
            pk, yk = p[known], y[known]
            positive = -torch.log(pk[torch.arange(len(yk)), 1, yk] + eps)
            negative_all = -torch.log(pk[:, 0, :] + eps)
            negative_all = negative_all.masked_fill(torch.nn.functional.one_hot(yk, self.k).bool(), 0.0)
            terms.append(0.5 * scale * (positive.mean() + negative_all.max(dim=1).values.mean()))
        unknown = ~known
        if self.has_unknown and bool(unknown.any()):
            pu = p[unknown]
            weight = self.alpha / self.k
            positive = (-torch.log(pu[:, 1, :] + eps) * weight).sum(dim=1).mean()
            negative = (-torch.log(pu[:, 0, :] + eps) * weight).sum(dim=1).mean()
            terms.append(0.5 * (positive + negative))
        return sum(terms) if terms else p.sum() * 0.0


def cluster_loss(embeddings: torch.Tensor, centres: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """0.1 x mean distance to the own centre + mean log(1 + sum over other centres of exp(own - other))."""
    distances = torch.cdist(embeddings, centres)
    own = distances.gather(1, clusters.view(-1, 1)).squeeze(1)
    others = distances.masked_fill(torch.nn.functional.one_hot(clusters, len(centres)).bool(), float("inf"))
    inter = torch.log1p(torch.exp(own.unsqueeze(1) - others).sum(dim=1)).mean()
    return 0.1 * own.mean() + 1.0 * inter


@register_objective("simclr")
class SimCLR(Objective):
    """Self-supervised contrastive learning (SimCLR's NT-Xent) on two augmented views; labels unused."""

    params_type = SimCLRParams
    needs_images = True

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.temperature = self.params.temperature

    def loss(self, model, x, y, index):
        if x.dim() != 4:
            raise ValueError("simclr needs image inputs")
        views = torch.cat([contrastive_view(x, self.generator), contrastive_view(x, self.generator)])
        z = model(views, all_outputs=True)["projection"]
        return nt_xent(z, self.temperature)


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy: row i's positive is its other view, i +- N."""
    n = len(z) // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(similarity, targets)


def contrastive_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of each (normalised) image: resized crop, flip, brightness/contrast jitter, noise."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    scales = 0.35 + 0.65 * torch.rand(n, generator=generator)
    for i in range(n):
        ch, cw = max(2, int(h * scales[i].sqrt())), max(2, int(w * scales[i].sqrt()))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    contrast = (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)).to(x.device)
    brightness = (0.8 * torch.rand(n, 1, 1, 1, generator=generator) - 0.4).to(x.device)
    noise = 0.1 * torch.randn(x.shape, generator=generator).to(x.device)
    return out * contrast + brightness + noise
# EAOA's, E2OAL's and BUAL's objectives live in their own module, which imports this one; importing it here
# registers them whenever the registry is read.
importlib.import_module("osal_ray.training.open_set_objectives")
