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
    ``with_invalid`` trains on the invalid samples as label K with K outputs; ``pool_sample`` adds
    that many unlabeled pool samples as label K (see ``NetworkOptions``).
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
    with_invalid: bool = False
    pool_sample: int = 0

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
        """(ids, labels) to train on: known samples as 0..K-1, invalid ones as K if included, a random
        sample of the unlabeled pool as K if asked (``pool_ids`` is called only for that), or every
        pool sample (label 0, unused) for a self-supervised network."""
        if self.whole_pool:
            ids = pool_ids()
            return ids.tolist(), [0] * len(ids)
        ids, labels = list(labeled_ids), list(labeled_labels)
        if self.include_invalid or self.with_invalid:
            ids, labels = ids + list(invalid_ids), labels + [num_known] * len(invalid_ids)
        if self.pool_sample:
            sample = unlabeled_sample(pool_ids(), list(labeled_ids) + list(invalid_ids), self.pool_sample)
            ids, labels = ids + sample, labels + [num_known] * len(sample)
        return ids, labels


def unlabeled_sample(pool_ids: np.ndarray, taken: list[int], size: int) -> list[int]:
    """``size`` pool ids not in ``taken`` (the annotated ones; all when fewer), drawn with a seed that the taken ids
    determine: the same labeled set draws the same sample (a resumed round trains on what it did)."""
    free = np.setdiff1d(np.asarray(pool_ids, dtype=np.int64), np.asarray(taken, dtype=np.int64))
    if len(free) <= size:
        return free.tolist()
    rng = np.random.default_rng(np.asarray([len(taken), *sorted(taken)[:1000]], dtype=np.int64) % (2**32))
    return np.sort(rng.choice(free, size, replace=False)).tolist()
