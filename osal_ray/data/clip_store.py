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
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osal_ray import storage
from osal_ray.config import ClipConfig, ScoringConfig
from osal_ray.data.pool import MANIFEST, PoolManifest, decode_images, pool_paths, read_manifest, read_table, vector_column
from osal_ray.data.ray_pass import actor_constructor_kwargs, actor_device, actor_map_options, read_pool, rows_per_block

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

    def __init__(self, clip: dict, manifest: dict, use_gpu: bool, threads: int) -> None:
        from osal_ray.clip import clip_image_settings

        self.device = actor_device(use_gpu, threads)
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
        return pa.table({"id": batch.column("id"), EMBEDDING: vector_column(embeddings)})


def ensure_clip_embeddings(manifest: PoolManifest, clip: ClipConfig, scoring: ScoringConfig, pool_files: int,
                           progress: Callable[[str], None] | None = None) -> PoolManifest:
    """The pool (and test set) with a ``clip_embedding`` column beside the image.

    The image tower is frozen, so each sample is embedded once per job: every seed's pool draws
    on one store of embeddings by sample id (``<data>/clip-<key>/``), and only ids not in it yet
    go through the Ray Data pass. The seed's augmented pool is then cached by its fingerprint.
    """
    if EMBEDDING in manifest.vector_columns:
        return manifest
    directory = Path(manifest.directory).parent / f"{Path(manifest.directory).name}-clip-{clip_key(clip)}"
    if (directory / MANIFEST).is_file():
        cached = read_manifest(directory)
        if cached.fingerprint == manifest.fingerprint:
            return cached
    store = Path(manifest.directory).parent / f"clip-{clip_key(clip)}"
    test_path = str(Path(manifest.directory) / manifest.test_file)
    rows_per_file = max(1, math.ceil(manifest.num_pool / pool_files))
    _embed_missing(pool_paths(manifest), store / "pool", manifest, clip, scoring, rows_per_file, progress)
    _embed_missing([test_path], store / "test", manifest, clip, scoring, manifest.num_test, progress)
    staging = directory.with_name(directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "pool").mkdir(parents=True)
    pool = [_with_embeddings(path, store / "pool", staging / "pool" / Path(path).name) for path in pool_paths(manifest)]
    test = _with_embeddings(test_path, store / "test", staging / "test.parquet")
    dim = read_table(pool[:1], [EMBEDDING]).column(EMBEDDING).type.byte_width // 4
    shutil.copyfile(Path(manifest.directory) / "initial_ids.npy", staging / "initial_ids.npy")
    augmented = dataclasses.replace(
        manifest,
        directory=str(directory.resolve()),
        pool_files=tuple(str(Path(p).relative_to(staging)) for p in pool),
        test_file=str(Path(test).relative_to(staging)),
        vector_columns={**manifest.vector_columns, EMBEDDING: dim},
    )
    (staging / MANIFEST).write_text(json.dumps(augmented.to_dict(), indent=1))
    storage.swap_directory(staging, directory)
    return augmented


def _stored_parts(store: Path) -> list[str]:
    return sorted(str(p) for p in store.glob("part-*/*.parquet"))


def _embed_missing(paths: list[str], store: Path, manifest: PoolManifest, clip: ClipConfig, scoring: ScoringConfig,
                   rows_per_file: int, progress: Callable[[str], None] | None = None) -> None:
    """Embed the rows of ``paths`` whose ids ``store`` lacks, as one more complete part of it."""
    needed = read_table(paths, []).column("id").to_numpy()
    parts = _stored_parts(store)
    have = read_table(parts, []).column("id").to_numpy() if parts else np.empty(0, dtype=np.int64)
    missing = np.setdiff1d(needed, have)
    if not len(missing):
        return
    dataset = read_pool(paths, len(needed), scoring)
    if len(missing) < len(needed):
        dataset = dataset.map_batches(_rows_with_ids, fn_kwargs={"ids": missing}, batch_format="pyarrow")
    dataset = dataset.repartition(target_num_rows_per_block=rows_per_block(len(missing), manifest.image_bytes + 16, scoring))
    dataset = dataset.map_batches(
        ClipImageEmbedder,
        fn_constructor_kwargs={"clip": dataclasses.asdict(clip), "manifest": manifest.to_dict(), **actor_constructor_kwargs(scoring)},
        batch_size=clip.batch_size,
        **actor_map_options(scoring),
    )
    # Written aside and renamed when complete: an interrupted pass leaves no partial part behind.
    name = f"part-{len(parts):04d}-{uuid.uuid4().hex[:8]}"
    writing = store / f".{name}"
    shutil.rmtree(writing, ignore_errors=True)
    writing.mkdir(parents=True)
    pending: list[pa.Table] = []
    files = done = 0
    started = last = time.perf_counter()
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        pending.append(batch)
        done += batch.num_rows
        if sum(t.num_rows for t in pending) >= rows_per_file:
            files = _write_part_file(pending, writing, files)
            pending = []
        if progress is not None and time.perf_counter() - last > 10:
            last = time.perf_counter()
            progress(f"CLIP embeddings: {done}/{len(missing)} images ({done / (last - started):.0f}/s)")
    if pending:
        _write_part_file(pending, writing, files)
    if progress is not None:
        progress(f"CLIP embeddings: {done} images in {time.perf_counter() - started:.1f}s")
    storage.swap_directory(writing, store / name)  # a new part: nothing to put aside


def _write_part_file(tables: list[pa.Table], directory: Path, index: int) -> int:
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables(tables), directory / f"{index:05d}.parquet")
    return index + 1


def _rows_with_ids(batch: pa.Table, ids: np.ndarray) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("id"), value_set=pa.array(ids)))


def _with_embeddings(path: str, store: Path, out: Path) -> str:
    """``path``'s rows (sorted by id) with their stored embeddings appended, written to ``out``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).sort_by("id")
    embeddings = read_table(_stored_parts(store), [EMBEDDING], table.column("id").to_numpy())
    if not table.column("id").equals(embeddings.column("id")):
        raise RuntimeError(f"the CLIP embedding store {store} lacks rows of {path}")
    pq.write_table(table.append_column(EMBEDDING, embeddings.column(EMBEDDING)), out)
    return str(out)
