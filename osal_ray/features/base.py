"""The feature-extractor contract and its registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.data.vector_store import Embedder
from osal_ray.params import Params
from osal_ray.registry import Registry


@dataclass(frozen=True)
class FeatureExtractor:
    """A frozen map from a sample's image to a vector.

    ``identity(params, config, manifest)``: what decides the vectors besides the images (weights'
    digest, what a fit is made on): the store's key; with ``manifest`` None, what the config alone
    decides (what a resumed run compares). ``embedder(params,
    config, manifest, store)``: the Ray Data embedder, fitting first what it fits (in the driver; the
    fitted state is written under ``store``). ``check(params, config)``: before any work (weights reachable).
    """

    name: str
    params_type: type[Params]
    identity: Callable[[Any, ExperimentConfig, PoolManifest | None], dict[str, Any]]
    embedder: Callable[[Any, ExperimentConfig, PoolManifest, Path], Embedder]
    check: Callable[[Any, ExperimentConfig], None] = lambda params, config: None


EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor (features.extractor)")


def register_extractor(extractor: FeatureExtractor) -> FeatureExtractor:
    """Register ``extractor`` under its name."""
    return EXTRACTORS.add(extractor.name, extractor)
