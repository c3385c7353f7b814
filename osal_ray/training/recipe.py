"""How one network is trained, as one object: model, head, objective with typed parameters, training.

A recipe is resolved once, when the experiment is planned (``osal_ray.experiment.plan``); the
pool it reads is bound later (``spec``), since an image pool's input size is known only once its
files are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from osal_ray.config import TrainConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.models import model_input
from osal_ray.params import Params
from osal_ray.training.checkpoints import NetworkSpec
from osal_ray.training.objective_params import CrossEntropyParams


@dataclass(frozen=True)
class NetworkRecipe:
    """One network of a strategy: what it is, what it minimises, on which samples, how long.

    Outputs: 1 for a self-supervised encoder (``whole_pool``), K + 1 for a network that also learns
    the invalid (unknown) samples as class K (``include_invalid``: the detector), K otherwise.
    """

    name: str
    model: str
    model_kwargs: dict[str, Any]
    train: TrainConfig
    head: str | None = None
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: str = "cross_entropy"
    objective_params: Params = field(default_factory=CrossEntropyParams)
    include_invalid: bool = False
    evaluate: bool = False
    once: bool = False
    whole_pool: bool = False

    def num_outputs(self, num_known: int) -> int:
        """The network's output count for K known classes."""
        if self.whole_pool:
            return 1
        return num_known + 1 if self.include_invalid else num_known

    def spec(self, manifest: PoolManifest) -> NetworkSpec:
        """The network reading this pool's model input (the image, or a cached feature column)."""
        column = model_input(self.model)
        channels, side = manifest.input_size(column)
        return NetworkSpec(self.model, self.num_outputs(manifest.num_known), channels, side, dict(self.model_kwargs),
                           input=column, head=self.head, head_kwargs=dict(self.head_kwargs))

    def training_set(self, labeled_ids: list[int], labeled_labels: list[int], invalid_ids: list[int], num_known: int,
                     pool_ids: Callable[[], np.ndarray]) -> tuple[list[int], list[int]]:
        """(ids, labels) to train on: known samples as 0..K-1, invalid ones as K if included,
        or every pool sample (label 0, unused; ``pool_ids`` is called only then) for a self-supervised network."""
        if self.whole_pool:
            ids = pool_ids()
            return ids.tolist(), [0] * len(ids)
        if not self.include_invalid:
            return list(labeled_ids), list(labeled_labels)
        return list(labeled_ids) + list(invalid_ids), list(labeled_labels) + [num_known] * len(invalid_ids)
