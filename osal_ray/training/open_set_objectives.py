"""Objectives of EAOA, E2OAL and BUAL (Zong et al.): an energy-margin detector, a classifier with
k-means pseudo-classes for the labeled unknowns, and a negative-learning network.

Registered on import (``osal_ray.training.objectives`` imports this module).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from osal_ray.training.objective_params import EnergyMarginParams, NegativeLearningParams, PseudoClassParams
from osal_ray.training.objectives import Objective, register_objective


def _none_loss(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0


@register_objective("energy_margin")
class EnergyMargin(Objective):
    """EAOA's detector: CE of the K+1 logits / T, plus (once the training set holds unknowns)
    ``energy_weight`` x (relu(E - m_in)^2 over knowns + relu(m_out - E)^2 over unknowns), with
    E = -logsumexp of the K known-class logits (raw, without the temperature)."""

    params_type = EnergyMarginParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.k = num_outputs - 1
        self.has_unknown = bool((np.asarray(labels) == self.k).any())

    def loss(self, model, x, y, index):
        logits = model(x)
        p = self.params
        loss = F.cross_entropy(logits / p.temperature, y)
        if not self.has_unknown or p.energy_weight == 0:
            return loss
        energy = -torch.logsumexp(logits[:, : self.k], dim=1)
        inside = y < self.k
        if bool(inside.any()):
            loss = loss + p.energy_weight * F.relu(energy[inside] - p.m_in).pow(2).mean()
        if bool((~inside).any()):
            loss = loss + p.energy_weight * F.relu(p.m_out - energy[~inside]).pow(2).mean()
        return loss


@register_objective("pseudo_classes")
class PseudoClasses(Objective):
    """E2OAL's classifier (head ``pseudo_classes``): CE of the K-way logits on the known samples, plus
    ``open_weight`` x the evidential loss (or CE) of the open head's K + m logits on every sample, a labeled unknown (label K)
    being the pseudo-class K + its k-means cluster. The unknowns are clustered on their frozen
    features (the input, when the network reads a cached feature column: once) or else on the
    network's L2-normalised embedding at the start of every epoch, each k-means started from the
    previous epoch's centres so that pseudo-class numbers stay put (a run resumed from a checkpoint
    starts its k-means afresh). Every worker holds the whole training set and the same seed, so all
    workers cluster alike."""

    params_type = PseudoClassParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.k = num_outputs
        self.unknown = torch.as_tensor(np.asarray(labels) == self.k)
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.long).clone()
        self.centres: np.ndarray | None = None
        self.frozen = False
        self.epoch = 0

    @torch.no_grad()
    def start_epoch(self, model, x, y, epoch, epochs):
        self.epoch = epoch
        if not bool(self.unknown.any()) or self.frozen:
            return
        module = getattr(model, "module", model)
        positions = torch.nonzero(self.unknown).flatten()
        if x.dim() == 2:
            features, self.frozen = x[positions].float().cpu().numpy(), True
        else:
            was_training = module.training
            module.eval()
            features = torch.cat([module(x[positions[i : i + 512]].to(self.device), all_outputs=True)["embedding"].cpu()
                                  for i in range(0, len(positions), 512)]).numpy()
            module.train(was_training)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        clusters, self.centres = pseudo_labels(features, module.num_pseudo, self.centres, seed)
        self.targets[positions] = self.k + torch.as_tensor(clusters, dtype=torch.long)

    def loss(self, model, x, y, index):
        out = model(x, all_outputs=True)
        known = y < self.k
        loss = F.cross_entropy(out["logits"][known], y[known]) if bool(known.any()) else _none_loss(out["logits"])
        targets = self.targets[index.cpu()].to(y.device)
        if self.params.open_loss == "edl":
            open_loss = evidential_loss(out["open_logits"], targets, min(1.0, self.epoch / 10.0))
        else:
            open_loss = F.cross_entropy(out["open_logits"], targets)
        return loss + self.params.open_weight * open_loss


def evidential_loss(logits: torch.Tensor, targets: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Evidential deep learning (Sensoy et al., 2018), as E2OAL's reference trains its open head: Dirichlet
    alpha = exp(clamp(logits, -10, 10)) + 1; the expected negative log-likelihood of the target under it,
    plus ``kl_weight`` x KL(Dir(alpha with the target's evidence removed) || Dir(1)) / classes (the
    reference anneals the weight as min(1, epoch / 10))."""
    classes = logits.shape[1]
    alpha = torch.exp(torch.clamp(logits, -10, 10)) + 1
    one_hot = F.one_hot(targets, classes).float()
    total = alpha.sum(dim=1, keepdim=True)
    nll = (one_hot * (torch.log(total + 1e-8) - torch.log(alpha + 1e-8))).sum(dim=1)
    rest = one_hot + (1.0 - one_hot) * alpha
    s = rest.sum(dim=1, keepdim=True)
    kl = (torch.lgamma(s).squeeze(1) - math.lgamma(classes) - torch.lgamma(rest).sum(dim=1)
          + ((rest - 1.0) * (torch.digamma(rest) - torch.digamma(s))).sum(dim=1))
    return nll.mean() + kl_weight * (kl / classes).mean()


def pseudo_labels(features: np.ndarray, count: int, init: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means (at most ``count`` clusters, fewer when there are fewer samples) of the L2-normalised
    features: (cluster of each sample, centres); ``init`` (earlier centres of the same count) starts it."""
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n_clusters = max(1, min(int(count), len(np.unique(x, axis=0))))
    start = init if init is not None and len(init) == n_clusters else "k-means++"
    model = KMeans(n_clusters=n_clusters, init=start, n_init=1, random_state=seed).fit(x)
    return model.labels_.astype(np.int64), model.cluster_centers_


@register_objective("negative_learning")
class NegativeLearning(Objective):
    """BUAL's negative network: CE on the known samples for the first 1 - ``nl_fraction`` of the epochs,
    then -log(clamp(1 - p_j, 1e-5)) of a random wrong class j: for a labeled known any class but its
    own, for a pool sample (label K, its label unknown) any class. The classifier layer is
    re-initialised when negative learning starts: the reference trains a second, fresh linear head
    on the positively trained backbone."""

    params_type = NegativeLearningParams

    def __init__(self, params, num_outputs, labels, device, generator) -> None:
        super().__init__(params, num_outputs, labels, device, generator)
        self.k = num_outputs
        self.negative = False

    def start_epoch(self, model, x, y, epoch, epochs):
        switch = int(round((1.0 - self.params.nl_fraction) * epochs))
        self.negative = self.k > 1 and epoch >= switch
        if self.negative and epoch == switch and switch > 0:  # once (a run resumed later keeps its layer)
            getattr(model, "module", model).head.reset_parameters()

    def loss(self, model, x, y, index):
        logits = model(x)
        known = y < self.k
        if not self.negative:
            return F.cross_entropy(logits[known], y[known]) if bool(known.any()) else _none_loss(logits)
        n = len(y)
        guess = torch.randint(0, self.k, (n,), generator=self.generator).to(y.device)
        offset = torch.randint(1, self.k, (n,), generator=self.generator).to(y.device)
        wrong = (torch.where(known, y, guess) + offset) % self.k
        log_not = torch.log(torch.clamp(1.0 - torch.softmax(logits, dim=1), min=1e-5, max=1.0))
        return F.nll_loss(log_not, wrong)
