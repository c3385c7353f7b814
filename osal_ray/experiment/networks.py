"""Which networks a run trains each round, on which samples, with which loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.training.checkpoints import NetworkSpec


@dataclass(frozen=True)
class NetworkPlan:
    """How one network is trained: its spec, whether invalid samples join as class K, its loss."""

    name: str
    spec: NetworkSpec
    include_invalid: bool = False
    temperature: float = 1.0
    class_weighting: str = "none"
    evaluate: bool = False

    def training_set(self, labeled_ids: list[int], labeled_labels: list[int], invalid_ids: list[int], num_known: int
                     ) -> tuple[list[int], list[int]]:
        """(ids, labels) to train on: known samples as 0..K-1, plus invalid ones as K if included."""
        if not self.include_invalid:
            return list(labeled_ids), list(labeled_labels)
        return list(labeled_ids) + list(invalid_ids), list(labeled_labels) + [num_known] * len(invalid_ids)


def plan_networks(config: ExperimentConfig, manifest: PoolManifest, names: set[str]) -> list[NetworkPlan]:
    """The plans for ``names`` (the classifier is always trained: it is what accuracy measures)."""
    height, _, channels = manifest.image_shape
    k = manifest.num_known
    plans = [
        NetworkPlan(
            "classifier",
            NetworkSpec(config.model.classifier, k, channels, height, dict(config.model.kwargs)),
            evaluate=True,
        )
    ]
    unknown = sorted(names - {"classifier"})
    if unknown:
        raise ValueError(f"no training plan for networks {unknown}")
    return plans


def network_seed(seed: int, round_index: int, network_index: int) -> int:
    """A distinct, reproducible torch seed per (run seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, network_index]).generate_state(1)[0])
