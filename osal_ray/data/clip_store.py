"""The CLIP embedding store: each sample's CLIP image embedding, once per job, beside its image.

The image tower is frozen, so each sample's CLIP image embedding is computed once per job by a
Ray Data actor pool (GPUs when configured) and kept in a store by sample id that every seed
shares (``<data>/clip-<key>/``); each seed's pool (and the test set) is rewritten once with a
``clip_embedding`` column beside the image, cached by the pool's fingerprint and the CLIP
weights. The scoring columns that read it live in ``osal_ray.scoring.clip``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable

import pyarrow as pa

from osal_ray.config import ClipConfig, ScoringConfig
from osal_ray.data.pool import PoolManifest, decode_images, vector_column
from osal_ray.data.ray_pass import actor_device
from osal_ray.data.vector_store import Embedder, with_vector_column

EMBEDDING = "clip_embedding"


def clip_key(clip: ClipConfig) -> str:
    """A digest of what decides the image embeddings: the architecture and the weights file's content
    (a file replaced at the same path is another model)."""
    identity = {"model": clip.model_name, "config": clip.model_config, "weights": clip_weights_digest(clip)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def clip_weights_digest(clip: ClipConfig) -> str | None:
    """The content digest of the weights file the CLIP config loads (None when none is reachable)."""
    from osal_ray.clip.loading import weights_digest, weights_file

    path = weights_file(clip.model_name, checkpoint=clip.checkpoint, pretrained=clip.pretrained, model_config=clip.model_config)
    return weights_digest(path) if path else None


def load_clipn(clip: ClipConfig, device: str = "cpu"):
    """The configured CLIPN (see ``osal_ray.clip.create_clipn``)."""
    from osal_ray.clip import create_clipn

    model, _ = create_clipn(
        clip.model_name, checkpoint=clip.checkpoint, pretrained=clip.pretrained, model_config=clip.model_config,
        device=device, allow_download=clip.allow_download,
    )
    return model


class ClipImageEmbedder:
    """Callable class for ``map_batches``: stored rows -> (id, CLIP image embedding)."""

    def __init__(self, clip: dict, manifest: dict, column: str, use_gpu: bool, threads: int) -> None:
        from osal_ray.clip import clip_image_settings

        self.device = actor_device(use_gpu, threads)
        self.column = column
        self.model = load_clipn(ClipConfig(**clip), str(self.device))
        self.manifest = PoolManifest.from_dict(manifest)
        self.settings = clip_image_settings(self.model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from osal_ray.clip import preprocess_batch

        size, mean, std = self.settings
        images = preprocess_batch(decode_images(batch.column("image"), self.manifest), size, mean, std, device=self.device)
        with torch.inference_mode():
            embeddings = self.model.encode_image(images, normalize=True).float().cpu().numpy()
        return pa.table({"id": batch.column("id"), self.column: vector_column(embeddings)})


def ensure_clip_embeddings(manifest: PoolManifest, clip: ClipConfig, scoring: ScoringConfig, pool_files: int,
                           progress: Callable[[str], None] | None = None) -> PoolManifest:
    """The pool (and test set) with a ``clip_embedding`` column beside the image.

    The image tower is frozen, so each sample is embedded once per job: every seed's pool draws
    on one store of embeddings by sample id (``<data>/clip-<key>/``), and only ids not in it yet
    go through the Ray Data pass. The seed's augmented pool is then cached by its fingerprint.
    """
    embedder = Embedder(ClipImageEmbedder, {"clip": dataclasses.asdict(clip)}, clip.batch_size, "CLIP embeddings")
    return with_vector_column(manifest, EMBEDDING, f"clip-{clip_key(clip)}", embedder, scoring, pool_files, progress)
