"""Per-round context arrays: small arrays the driver prepares for columns that declare them.

Example: VLPure-AL's visual-similarity column needs the per-class mean image embedding of the
labeled ID samples; the driver computes it each round and hands it to the scoring actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.registry import Registry


@dataclass(frozen=True)
class ScoringState:
    """What a context provider may read: the config, the pool and the current labeled set."""

    config: ExperimentConfig
    manifest: PoolManifest
    labeled_ids: list[int]
    labeled_labels: list[int]


ContextProvider = Callable[[ScoringState], np.ndarray]
CONTEXT: Registry[ContextProvider] = Registry("scoring context")


def register_context(name: str) -> Callable[[ContextProvider], ContextProvider]:
    """Register ``provider(ScoringState) -> np.ndarray`` for context array ``name``."""
    return CONTEXT.decorator(name)


def build_context(names: Iterable[str], state: ScoringState) -> dict[str, np.ndarray]:
    """Compute every named context array for this round."""
    return {name: CONTEXT.get(name)(state) for name in sorted(names)}
