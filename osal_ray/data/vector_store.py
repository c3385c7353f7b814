"""Stored vector columns computed once per job: a frozen network's output for every sample, beside its image.

A frozen embedder (CLIP's image tower, a feature extractor) gives each sample the same vector in every
seed, strategy and round, so it is computed once by a Ray Data actor pool (GPUs when configured) and kept
in a store by sample id under ``<data>/<key>/`` (``key`` names what decides the vectors: the weights'
digest, a feature recipe); only ids not in the store yet go through the pass. Each seed's pool (and
test set) is then rewritten once with the column beside the image, cached by its fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osal_ray import storage
from osal_ray.config import ScoringConfig
from osal_ray.data.pool import MANIFEST, PoolManifest, pool_paths, read_manifest, read_table
from osal_ray.data.ray_pass import actor_constructor_kwargs, actor_map_options, read_pool, rows_per_block


FEATURES = "features"  # the column a frozen feature extractor writes (``osal_ray.features``), heads read


@dataclass(frozen=True)
class Embedder:
    """A callable class for ``map_batches`` (constructed with ``kwargs`` plus ``manifest``, ``column``,
    ``use_gpu``, ``threads``; stored rows in, ``(id, column)`` out), its batch size, and what it is called
    in progress lines."""

    cls: type
    kwargs: dict[str, Any]
    batch_size: int
    what: str


def with_vector_column(manifest: PoolManifest, column: str, key: str, embedder: Embedder, scoring: ScoringConfig,
                       pool_files: int, progress: Callable[[str], None] | None = None) -> PoolManifest:
    """The pool (and test set) with ``column`` beside the image, from the store ``<data>/<key>/``."""
    if column in manifest.vector_columns:
        return manifest
    directory = Path(manifest.directory).parent / f"{Path(manifest.directory).name}-{key}"
    if (directory / MANIFEST).is_file():
        cached = read_manifest(directory)
        if cached.fingerprint == manifest.fingerprint:
            _copy_side_files(Path(manifest.directory), directory)  # an image pool's absent ids change between rounds
            return cached
    store = Path(manifest.directory).parent / key
    test_path = str(Path(manifest.directory) / manifest.test_file)
    rows_per_file = max(1, math.ceil(manifest.num_pool / pool_files))
    _embed_missing(pool_paths(manifest), store / "pool", manifest, column, embedder, scoring, rows_per_file, progress)
    _embed_missing([test_path], store / "test", manifest, column, embedder, scoring, manifest.num_test, progress)
    staging = directory.with_name(directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "pool").mkdir(parents=True)
    pool = [_with_embeddings(path, store / "pool", staging / "pool" / Path(path).name, column) for path in pool_paths(manifest)]
    test = _with_embeddings(test_path, store / "test", staging / "test.parquet", column)
    dim = read_table(pool[:1], [column]).column(column).type.byte_width // 4
    _copy_side_files(Path(manifest.directory), staging)
    augmented = dataclasses.replace(
        manifest,
        directory=str(directory.resolve()),
        pool_files=tuple(str(Path(p).relative_to(staging)) for p in pool),
        test_file=str(Path(test).relative_to(staging)),
        vector_columns={**manifest.vector_columns, column: dim},
    )
    (staging / MANIFEST).write_text(json.dumps(augmented.to_dict(), indent=1))
    storage.swap_directory(staging, directory)
    return augmented


def _copy_side_files(source: Path, target: Path) -> None:
    """The pool directory's arrays beside its Parquet files (initial ids; an image pool's initial labels and
    absent ids) into the augmented one, where they differ."""
    for side_file in source.glob("*.npy"):
        data = side_file.read_bytes()
        copy = target / side_file.name
        if not copy.is_file() or copy.read_bytes() != data:
            storage.write_bytes(copy, data)


def _stored_parts(store: Path) -> list[str]:
    return sorted(str(p) for p in store.glob("part-*/*.parquet"))


def _embed_missing(paths: list[str], store: Path, manifest: PoolManifest, column: str, embedder: Embedder,
                   scoring: ScoringConfig, rows_per_file: int, progress: Callable[[str], None] | None = None) -> None:
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
        embedder.cls,
        fn_constructor_kwargs={**embedder.kwargs, "manifest": manifest.to_dict(), "column": column, **actor_constructor_kwargs(scoring)},
        batch_size=embedder.batch_size,
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
            progress(f"{embedder.what}: {done}/{len(missing)} images ({done / (last - started):.0f}/s)")
    if pending:
        _write_part_file(pending, writing, files)
    if progress is not None:
        progress(f"{embedder.what}: {done} images in {time.perf_counter() - started:.1f}s")
    storage.swap_directory(writing, store / name)  # a new part: nothing to put aside


def _write_part_file(tables: list[pa.Table], directory: Path, index: int) -> int:
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables(tables), directory / f"{index:05d}.parquet")
    return index + 1


def _rows_with_ids(batch: pa.Table, ids: np.ndarray) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("id"), value_set=pa.array(ids)))


def _with_embeddings(path: str, store: Path, out: Path, column: str) -> str:
    """``path``'s rows (sorted by id) with their stored ``column`` appended, written to ``out``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).sort_by("id")
    embeddings = read_table(_stored_parts(store), [column], table.column("id").to_numpy())
    if not table.column("id").equals(embeddings.column("id")):
        raise RuntimeError(f"the {column} store {store} lacks rows of {path}")
    pq.write_table(table.append_column(column, embeddings.column(column)), out)
    return str(out)
