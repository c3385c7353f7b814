"""``pixels``: the image's pixels, flattened, optionally reduced by PCA and whitened (no training, no
weights): for small inputs such as digits and Fashion-MNIST, and for tests.

PCA is fitted once, in the driver, on at most ``fit_samples`` pool images drawn with a fixed seed
(no labels are read); every sample is then projected by the Ray Data pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest, decode_images, pool_paths, read_pool_ids, read_table, vector_column
from osal_ray.data.vector_store import Embedder
from osal_ray.features.base import FeatureExtractor, register_extractor
from osal_ray.params import Params, refuse

FIT_FILE = "pca.npz"


@dataclass(frozen=True)
class PixelParams(Params):
    """``components``: PCA dimensions (null: every pixel, scaled to [0, 1]); ``whiten``: unit variance per
    component; ``fit_samples``: pool images PCA is fitted on."""

    components: int | None = 64
    whiten: bool = True
    fit_samples: int = 20_000

    def check(self, where: str) -> None:
        if self.components is not None and self.components < 1:
            refuse(where, "components", "must be at least 1 (null: every pixel)")
        if self.fit_samples < 2:
            refuse(where, "fit_samples", "must be at least 2")


def _fit_ids(params: PixelParams, manifest: PoolManifest) -> np.ndarray:
    ids = read_pool_ids(manifest)
    if len(ids) <= params.fit_samples:
        return ids
    return np.sort(np.random.default_rng(0).choice(ids, params.fit_samples, replace=False))


def _identity(params: PixelParams, config: ExperimentConfig, manifest: PoolManifest | None) -> dict[str, Any]:
    """With a pool: the pixels' size and, with PCA, the images it is fitted on (the pool's ids drawn, and
    the dataset). The parameters alone decide the rest."""
    if manifest is None:
        return {}
    identity: dict[str, Any] = {"image_shape": list(manifest.image_shape), "pixel_max": manifest.pixel_max}
    if params.components is not None:
        fitted = np.ascontiguousarray(_fit_ids(params, manifest), dtype=np.int64)
        identity.update(dataset=manifest.dataset, fit_ids=hashlib.sha256(fitted.tobytes()).hexdigest()[:16])
    return identity


def flat_pixels(images: np.ndarray, pixel_max: float) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, H*W*C) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(pixel_max)


def fit_pca(x: np.ndarray, components: int, whiten: bool) -> dict[str, np.ndarray]:
    """Mean, the top ``components`` principal axes (rows) and the scale each projection is divided by."""
    mean = x.mean(axis=0)
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components, axes.shape[0])
    std = singular[:k] / np.sqrt(max(len(x) - 1, 1))
    scale = np.where(std > 1e-6, std, 1.0) if whiten else np.ones(k, dtype=np.float32)
    return {"mean": mean.astype(np.float32), "axes": axes[:k].astype(np.float32), "scale": scale.astype(np.float32)}


def _embedder(params: PixelParams, config: ExperimentConfig, manifest: PoolManifest, store: Path) -> Embedder:
    state = None
    if params.components is not None:
        fit = store / "fit" / FIT_FILE
        if not fit.is_file():
            table = read_table(pool_paths(manifest), ["image"], _fit_ids(params, manifest))
            x = flat_pixels(decode_images(table.column("image"), manifest), manifest.pixel_max)
            fit.parent.mkdir(parents=True, exist_ok=True)
            from osal_ray import storage

            pca = fit_pca(x, params.components, params.whiten)

            def save(tmp: Path) -> None:
                with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to a path
                    np.savez(handle, **pca)

            storage.write_file(fit, save)
        state = str(fit)
    return Embedder(PixelEmbedder, {"state": state}, config.features.batch_size, "pixel features")


class PixelEmbedder:
    """Callable class for ``map_batches``: stored rows -> (id, pixels, PCA-projected where fitted)."""

    def __init__(self, state: str | None, manifest: dict, column: str, use_gpu: bool, threads: int) -> None:
        self.manifest = PoolManifest.from_dict(manifest)
        self.column = column
        self.pca = dict(np.load(state)) if state else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = flat_pixels(decode_images(batch.column("image"), self.manifest), self.manifest.pixel_max)
        if self.pca is not None:
            x = (x - self.pca["mean"]) @ self.pca["axes"].T / self.pca["scale"]
        return pa.table({"id": batch.column("id"), self.column: vector_column(x)})


register_extractor(FeatureExtractor("pixels", PixelParams, _identity, _embedder))
