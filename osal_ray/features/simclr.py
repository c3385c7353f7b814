"""``simclr``: a self-supervised encoder trained once on the job's pool images (labels unused), frozen.

The encoder (``model`` with ``model_kwargs``, plus a 2-layer projection head of ``projection_dim``) is
trained with the ``simclr`` objective (NT-Xent on two augmented views, ``osal_ray.training.objectives``)
on every pool image, on Ray Train (``fit_network``; ``train.num_workers``, ``use_gpu`` and
``cpus_per_worker`` of the job say where), then frozen: a Ray Data pass writes the backbone's embedding
(before the projection head, as SimCLR's linear evaluation does) as the ``features`` column.

The trained encoder is kept under the store folder (``encoder.pt``, a weights-only checkpoint): the store
key holds the whole recipe and the pool it was trained on, so seeds, strategies and reruns that share the
pool train nothing. A checkpoint there that cannot be loaded is refused with an error naming the file.
The defaults are the recipe measured on Fashion-MNIST's 60,000 training images within 20 minutes on 2 CPU
cores (``benchmarks/simclr_features.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest, decode_images, read_pool_ids, to_model_input, vector_column
from osal_ray.data.vector_store import Embedder
from osal_ray.errors import InputError
from osal_ray.features.base import FeatureExtractor, register_extractor
from osal_ray.params import Params, positive_int, refuse

ENCODER_FILE = "encoder.pt"
WHERE = "features.params"


@dataclass(frozen=True)
class SimCLRFeatureParams(Params):
    """``model`` / ``model_kwargs``: the image backbone (a registered image model) and its arguments;
    ``projection_dim``: the projection head's output; ``epochs``, ``batch_size``, ``lr`` (SGD with momentum
    0.9, divided by 10 after ``lr_decay_at`` of the epochs), ``weight_decay``: the training; ``temperature``:
    NT-Xent's; ``seed``: the encoder's initialisation, views and shuffles."""

    model: str = "cnn"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16, "embedding": 256})
    projection_dim: int = 128
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.1
    lr_decay_at: float = 0.75
    weight_decay: float = 1e-4
    temperature: float = 0.5
    seed: int = 0

    def check(self, where: str) -> None:
        from osal_ray.models import MODELS, model_input

        entry = MODELS.get(self.model, f"{where}.model")
        if model_input(self.model, f"{where}.model") != "image":
            refuse(where, "model", f"{self.model} reads stored features, not images: give an image model (e.g. cnn)")
        try:
            inspect.signature(entry.factory).bind(num_classes=1, in_channels=1, image_size=8, **self.model_kwargs)
        except TypeError as exc:
            refuse(where, "model_kwargs", f"{self.model} takes no such argument ({exc})")
        for key in ("projection_dim", "epochs", "batch_size"):
            if not positive_int(getattr(self, key)):
                refuse(where, key, "must be a positive integer")
        if self.batch_size < 2:
            refuse(where, "batch_size", "must be at least 2 (contrastive pairs)")
        for key in ("lr", "temperature"):
            if not getattr(self, key) > 0:
                refuse(where, key, "must be positive")
        if not 0 < self.lr_decay_at <= 1:
            refuse(where, "lr_decay_at", "must be in (0, 1] (1: no decay)")
        if not self.weight_decay >= 0:
            refuse(where, "weight_decay", "must be >= 0")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            refuse(where, "seed", "must be an integer in [0, 2**31)")


def _identity(params: SimCLRFeatureParams, config: ExperimentConfig, manifest: PoolManifest | None) -> dict[str, Any]:
    """With a pool: the images the encoder is trained on (the dataset, the pool's ids, the images' size);
    the parameters (the recipe) are in the identity already."""
    if manifest is None:
        return {}
    ids = np.ascontiguousarray(read_pool_ids(manifest), dtype=np.int64)
    return {"dataset": manifest.dataset, "image_shape": list(manifest.image_shape), "pixel_max": manifest.pixel_max,
            "trained_on": hashlib.sha256(ids.tobytes()).hexdigest()[:16]}


def encoder_spec(params: SimCLRFeatureParams, manifest: PoolManifest):
    """The encoder's network: the backbone with the projection head (one unused output)."""
    from osal_ray.training.checkpoints import NetworkSpec

    channels, side = manifest.input_size("image")
    return NetworkSpec(params.model, 1, channels, side, dict(params.model_kwargs), input="image", head="projection",
                       head_kwargs={"dim": params.projection_dim})


def train_encoder(params: SimCLRFeatureParams, config: ExperimentConfig, manifest: PoolManifest, store: Path) -> Path:
    """``store/encoder.pt``: trained on every pool image with Ray Train unless it is there (then checked)."""
    from osal_ray import storage
    from osal_ray.training.checkpoints import MODEL_FILE, load_network
    from osal_ray.training.fit import fit_network
    from osal_ray.training.worker import TrainJob

    spec = encoder_spec(params, manifest)
    target = store / ENCODER_FILE
    if target.is_file():
        _check_encoder(target, spec)
        return target
    ids = read_pool_ids(manifest)
    train = dataclasses.replace(
        config.train, epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, momentum=0.9,
        weight_decay=params.weight_decay, lr_step=max(1, math.ceil(params.lr_decay_at * params.epochs)), lr_gamma=0.1,
        augment=False, reinit=True, checkpoint_every=0)
    job = TrainJob(network="simclr-encoder", spec=spec, manifest=manifest, ids=ids.tolist(), labels=[0] * len(ids),
                   seed=params.seed, train=train, objective="simclr", objective_params={"temperature": params.temperature},
                   log_prefix="simclr features")
    result = fit_network(job, store / "fit", "simclr-encoder")
    source = Path(result.checkpoint_path)
    source = source / MODEL_FILE if source.is_dir() else source
    load_network(source, expected=spec, field_name=WHERE)  # what the pass will load, checked once here
    storage.write_bytes(target, source.read_bytes())
    return target


def _check_encoder(path: Path, spec) -> None:
    """A stored encoder that loads as ``spec`` (a corrupt or foreign file: an error naming it, never wrong features)."""
    from osal_ray.training.checkpoints import load_network

    try:
        load_network(path, expected=spec, field_name=WHERE)
    except InputError as exc:
        raise InputError(WHERE, f"the stored simclr encoder cannot be used ({exc.message}); delete {path} to train it again") from None


def _embedder(params: SimCLRFeatureParams, config: ExperimentConfig, manifest: PoolManifest, store: Path) -> Embedder:
    encoder = train_encoder(params, config, manifest, store)
    return Embedder(SimCLREmbedder, {"encoder": str(encoder)}, config.features.batch_size, "simclr features")


class SimCLREmbedder:
    """Callable class for ``map_batches``: stored rows -> (id, the frozen encoder's backbone embedding)."""

    def __init__(self, encoder: str, manifest: dict, column: str, use_gpu: bool, threads: int) -> None:
        import torch

        from osal_ray.data.ray_pass import actor_device
        from osal_ray.training.checkpoints import load_network

        self.torch = torch
        self.device = actor_device(use_gpu, threads)
        self.manifest = PoolManifest.from_dict(manifest)
        self.column = column
        model, _ = load_network(encoder, field_name=WHERE)
        self.model = model.to(self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = to_model_input(decode_images(batch.column("image"), self.manifest), self.manifest).to(self.device)
        with self.torch.inference_mode():
            embedding = self.model.forward_all(x).embedding.float().cpu().numpy()
        return pa.table({"id": batch.column("id"), self.column: vector_column(embedding)})


register_extractor(FeatureExtractor("simclr", SimCLRFeatureParams, _identity, _embedder))
