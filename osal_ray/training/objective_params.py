"""The typed parameters of every training objective (torch-free, so strategies can declare them).

Defaults live here once. A knob a strategy exposes (learning loss, EOAL) is declared here and the
strategy's own parameter class inherits it; a knob the job owns (the detector's temperature and class
weights, ``detector.*`` in the config) is filled in by the network plan and has no default here
beyond plain cross-entropy's.
"""

from __future__ import annotations

from dataclasses import dataclass

from osal_ray.config import ClassWeights, DetectorConfig, WeightReduction, allowed
from osal_ray.params import NoParams, Params, positive_int, refuse

# How a class-weighted batch loss is averaged (``detector.class_weight_reduction``).
WEIGHT_REDUCTIONS = allowed(WeightReduction)
CLASS_WEIGHTS = tuple(w for w in allowed(ClassWeights) if w != "auto")  # detector.class_weights once resolved


def check_temperature(where: str, temperature: float) -> None:
    """Refuse a temperature that is not positive (the detector's, ``detector.temperature``)."""
    if not temperature > 0:
        refuse(where, "temperature", "must be positive")


@dataclass(frozen=True)
class CrossEntropyParams(Params):
    """Cross-entropy of softmax(logits / temperature); the defaults are plain cross-entropy (the classifier)."""

    temperature: float = 1.0
    class_weights: str = "none"
    class_weight_reduction: str = DetectorConfig.class_weight_reduction

    def check(self, where: str) -> None:
        if not self.temperature > 0:
            refuse(where, "temperature", "must be positive")
        if self.class_weights not in CLASS_WEIGHTS:
            refuse(where, "class_weights", f"{self.class_weights!r} is not one of {', '.join(CLASS_WEIGHTS)}")
        if self.class_weight_reduction not in WEIGHT_REDUCTIONS:
            refuse(where, "class_weight_reduction",
                   f"{self.class_weight_reduction!r} is not one of {', '.join(WEIGHT_REDUCTIONS)}")


@dataclass(frozen=True)
class LossPredictionParams(Params):
    """Learning loss (Yoo & Kweon, 2019): CE + ``weight`` x ranking loss with ``margin``; the module stops
    back-propagating into the backbone after ``detach_fraction`` of the epochs."""

    weight: float = 1.0
    margin: float = 1.0
    detach_fraction: float = 0.6

    def check(self, where: str) -> None:
        if not self.weight >= 0:
            refuse(where, "weight", "must be >= 0")
        if not self.margin > 0:
            refuse(where, "margin", "must be positive")
        if not 0.0 <= self.detach_fraction <= 1.0:
            refuse(where, "detach_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class OpenSetLossParams(Params):
    """EOAL's loss weights: ``pareto_alpha`` splits the one-vs-all loss between knowns and unknowns,
    ``cluster_weight`` scales the cluster loss over ``clusters_per_class`` x K FINCH clusters."""

    pareto_alpha: float = 0.8
    cluster_weight: float = 0.1
    clusters_per_class: int = 1

    def check(self, where: str) -> None:
        if not 0.0 <= self.pareto_alpha < 1.0:
            refuse(where, "pareto_alpha", "must be in [0, 1)")
        if not self.cluster_weight >= 0:
            refuse(where, "cluster_weight", "must be >= 0")
        if not positive_int(self.clusters_per_class):
            refuse(where, "clusters_per_class", "must be a positive integer")


@dataclass(frozen=True)
class EntropicOpenSetParams(OpenSetLossParams):
    """EOAL's detector objective: the loss weights and the K+1 logits' temperature (``detector.temperature``)."""

    temperature: float = DetectorConfig.temperature

    def check(self, where: str) -> None:
        super().check(where)
        check_temperature(where, self.temperature)


@dataclass(frozen=True)
class SimCLRParams(Params):
    """NT-Xent temperature of the self-supervised encoder (MQNet's ``ssl_temperature`` sets it)."""

    temperature: float

    def check(self, where: str) -> None:
        if not self.temperature > 0:
            refuse(where, "temperature", "must be positive")


@dataclass(frozen=True)
class EnergyLossParams(Params):
    """EAOA's energy loss (Zong et al.): ``energy_weight`` x the squared hinges on the known-class energy
    E = -logsumexp(known logits), knowns pushed below ``m_in``, labeled unknowns above ``m_out``."""

    energy_weight: float = 0.01
    m_in: float = -25.0
    m_out: float = -7.0

    def check(self, where: str) -> None:
        if not self.energy_weight >= 0:
            refuse(where, "energy_weight", "must be >= 0")
        if not self.m_in < self.m_out:
            refuse(where, "m_in", "must be below m_out (knowns have the lower energy)")


@dataclass(frozen=True)
class EnergyMarginParams(EnergyLossParams):
    """EAOA's detector objective: the energy loss plus cross-entropy of the K+1 logits / ``temperature``
    (``detector.temperature``)."""

    temperature: float = DetectorConfig.temperature

    def check(self, where: str) -> None:
        super().check(where)
        check_temperature(where, self.temperature)


OPEN_LOSSES = ("edl", "cross_entropy")


@dataclass(frozen=True)
class PseudoClassParams(Params):
    """E2OAL's classifier: cross-entropy of the K-way logits on the knowns plus ``open_weight`` x the loss
    of the open head's K + m logits (``open_loss``: the reference's evidential ``edl`` or ``cross_entropy``),
    the labeled unknowns split into m k-means pseudo-classes."""

    open_weight: float = 1.0
    open_loss: str = "edl"

    def check(self, where: str) -> None:
        if not self.open_weight >= 0:
            refuse(where, "open_weight", "must be >= 0")
        if self.open_loss not in OPEN_LOSSES:
            refuse(where, "open_loss", f"must be one of {', '.join(OPEN_LOSSES)}")


@dataclass(frozen=True)
class NegativeLearningParams(Params):
    """BUAL's negative network: positive learning (cross-entropy on the labeled knowns) for the first
    1 - ``nl_fraction`` of the epochs, then negative learning (-log(1 - p) of a random wrong class) on the
    labeled knowns and the unlabeled pool sample (whose random label makes every class a possible wrong one)."""

    nl_fraction: float = 0.5

    def check(self, where: str) -> None:
        if not 0.0 < self.nl_fraction <= 1.0:
            refuse(where, "nl_fraction", "must be in (0, 1]")


__all__ = ["CLASS_WEIGHTS", "WEIGHT_REDUCTIONS", "CrossEntropyParams", "EnergyLossParams", "EnergyMarginParams",
           "EntropicOpenSetParams",
           "LossPredictionParams", "NegativeLearningParams", "NoParams", "OpenSetLossParams", "PseudoClassParams",
           "SimCLRParams"]
