"""The ``features`` column of a pool: computed once per extractor recipe and images, then reused.

The store is keyed by the extractor's name and identity (its parameters, its weights' digest, what it
was fitted on), so seeds, strategies, rounds, sweeps and reruns that share it compute nothing; a run
whose extractor or weights changed sees another key, and a resumed run compares the identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.data.vector_store import FEATURES, with_vector_column
from osal_ray.features.base import EXTRACTORS, FeatureExtractor
from osal_ray.params import Params


def extractor_params(config: ExperimentConfig) -> tuple[FeatureExtractor, Params]:
    """The configured extractor and its typed, checked parameters (InputError naming ``features.*``)."""
    extractor = EXTRACTORS.get(config.features.extractor, "features.extractor")
    return extractor, extractor.params_type.build(config.features.params, "features.params")


def features_identity(config: ExperimentConfig, manifest: PoolManifest | None) -> dict[str, Any]:
    """What decides a pool's feature vectors: the extractor, its parameters and its own identity (with
    ``manifest`` None: what the config alone decides, which a resumed run compares)."""
    extractor, params = extractor_params(config)
    return {"extractor": extractor.name, "params": params.to_dict(), **extractor.identity(params, config, manifest)}


def features_key(identity: dict[str, Any]) -> str:
    return "features-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ensure_features(manifest: PoolManifest, config: ExperimentConfig, progress: Callable[[str], None] | None = None) -> PoolManifest:
    """The pool (and its test set) with the ``features`` column, computed once on Ray and stored."""
    if FEATURES in manifest.vector_columns:
        return manifest
    extractor, params = extractor_params(config)
    key = features_key(features_identity(config, manifest))
    store = Path(manifest.directory).parent / key
    embedder = extractor.embedder(params, config, manifest, store)
    return with_vector_column(manifest, FEATURES, key, embedder, config.scoring, config.data.pool_files, progress)
