"""``clip``: the CLIP image tower's normalised embedding (``clip.*`` names the model and its weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from osal_ray.config import ExperimentConfig
from osal_ray.data.clip_store import ClipImageEmbedder, clip_key
from osal_ray.data.pool import PoolManifest
from osal_ray.data.vector_store import Embedder
from osal_ray.features.base import FeatureExtractor, register_extractor
from osal_ray.params import NoParams


def _identity(params: NoParams, config: ExperimentConfig, manifest: PoolManifest | None) -> dict[str, Any]:
    return {"clip": clip_key(config.clip)}  # the architecture and the weights file's content


def _embedder(params: NoParams, config: ExperimentConfig, manifest: PoolManifest, store: Path) -> Embedder:
    return Embedder(ClipImageEmbedder, {"clip": dataclasses.asdict(config.clip)}, config.clip.batch_size, "CLIP features")


def _check(params: NoParams, config: ExperimentConfig) -> None:
    """open_clip is installed and the CLIP weights are reachable, before any work."""
    from osal_ray.clip import check_clipn_weights
    from osal_ray.extras import require_extra

    require_extra("open_clip", "features.extractor", "CLIP features")
    clip = config.clip
    check_clipn_weights(clip.model_name, checkpoint=clip.checkpoint, pretrained=clip.pretrained,
                        model_config=clip.model_config, allow_download=clip.allow_download)


register_extractor(FeatureExtractor("clip", NoParams, _identity, _embedder, _check))
