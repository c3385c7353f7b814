"""Which networks a run trains each round, on which samples, with which loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.models import model_input
from osal_ray.scoring import networks_for
from osal_ray.strategies import Strategy
from osal_ray.training.checkpoints import NetworkSpec


@dataclass(frozen=True)
class NetworkPlan:
    """How one network is trained: its spec, its objective, and which samples it learns from."""

    name: str
    spec: NetworkSpec
    objective: str = "cross_entropy"
    objective_params: dict[str, Any] = field(default_factory=dict)
    include_invalid: bool = False
    evaluate: bool = False

    def training_set(self, labeled_ids: list[int], labeled_labels: list[int], invalid_ids: list[int], num_known: int
                     ) -> tuple[list[int], list[int]]:
        """(ids, labels) to train on: known samples as 0..K-1, plus invalid ones as K if included."""
        if not self.include_invalid:
            return list(labeled_ids), list(labeled_labels)
        return list(labeled_ids) + list(invalid_ids), list(labeled_labels) + [num_known] * len(invalid_ids)


def plan_networks(config: ExperimentConfig, manifest: PoolManifest, strategy: Strategy) -> list[NetworkPlan]:
    """The networks ``strategy``'s score columns need, plus the classifier (what accuracy measures).

    The detector has K+1 outputs and learns the invalid (queried unknown) samples as class K,
    with cross-entropy on logits / ``detector.temperature``, weighted as ``detector.class_weights``
    says (``auto``: the method's own choice, inverse frequency for JSOSAL, none for LfOSA).
    """
    names = networks_for(strategy.columns) | {"classifier"}
    k = manifest.num_known
    plans = [NetworkPlan("classifier", _spec(config.model.classifier, k, manifest, config.model.kwargs), evaluate=True)]
    if "detector" in names:
        weighting = config.detector.class_weights
        plans.append(
            NetworkPlan(
                "detector",
                _spec(config.model.detector or config.model.classifier, k + 1, manifest, config.model.kwargs),
                objective_params={
                    "temperature": config.detector.temperature,
                    "class_weights": strategy.detector_class_weights if weighting == "auto" else weighting,
                },
                include_invalid=True,
            )
        )
    unknown = sorted(names - {p.name for p in plans})
    if unknown:
        raise ValueError(f"no training plan for networks {unknown}")
    return plans


def _spec(model: str, outputs: int, manifest: PoolManifest, kwargs: dict[str, Any]) -> NetworkSpec:
    """A network reading the model's input column (the image, or a cached feature) of this pool."""
    column = model_input(model)
    channels, side = manifest.input_size(column)
    return NetworkSpec(model, outputs, channels, side, dict(kwargs), input=column)


def network_seed(seed: int, round_index: int, network_index: int) -> int:
    """A distinct, reproducible torch seed per (run seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, network_index]).generate_state(1)[0])
