"""The materialised pool: a few Parquet files of (id, label, image) plus a JSON manifest.

Images are stored as fixed-size binary (the raw uint8 bytes of H x W x C), which Ray Data
reads and the scorer decodes without a copy. The ``label`` column is read only by the
simulated oracle and by evaluation; scorers and trainers read ``id`` and ``image``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from osal_ray import storage
from osal_ray.data.datasets import ImageSplit, SourceDataset
from osal_ray.data.splits import OpenSetSplit

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PoolManifest:
    """What a materialised pool holds; small and JSON-serialisable, so it travels to actors."""

    directory: str
    dataset: str
    image_shape: tuple[int, int, int]
    pixel_max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    known_classes: tuple[int, ...]
    pool_files: tuple[str, ...]
    test_file: str
    num_pool: int
    num_initial: int
    num_test: int
    fingerprint: str
    vector_columns: dict[str, int] = field(default_factory=dict)

    @property
    def num_known(self) -> int:
        return len(self.known_classes)

    @property
    def image_bytes(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    def row_bytes(self, columns: set[str] | frozenset[str]) -> int:
        """Bytes of one row's id and stored ``columns`` (the image as uint8, vectors as float32)."""
        return 8 + sum(self.image_bytes if c == "image" else 4 * self.vector_columns[c] for c in columns)

    def known_class_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[c] for c in self.known_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "PoolManifest":
        fields = dict(raw)
        for key in ("image_shape", "mean", "std", "class_names", "known_classes", "pool_files"):
            fields[key] = tuple(fields[key])
        return cls(**fields)

    def input_size(self, column: str) -> tuple[int, int]:
        """(channels, side) of a model input: the image's, or (dimension, 1) of a vector column."""
        if column == "image":
            return self.image_shape[2], self.image_shape[0]
        if column not in self.vector_columns:
            raise KeyError(f"the pool has no stored column {column!r}; it has image and {sorted(self.vector_columns)}")
        return self.vector_columns[column], 1


def split_fingerprint(dataset: str, split: OpenSetSplit, extra: str = "") -> str:
    """A digest of the split, so a materialised pool is reused only for the same split."""
    digest = hashlib.sha256()
    digest.update(f"{dataset}|{split.known_classes}|{extra}".encode())
    for ids in (split.pool_ids, split.initial_ids, split.test_ids):
        digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def materialize_pool(source: SourceDataset, split: OpenSetSplit, directory: Path, num_files: int) -> PoolManifest:
    """Write the pool and the known-class test set as Parquet, unless an identical one exists."""
    fingerprint = split_fingerprint(source.name, split, source.content_digest)
    existing = read_manifest(directory) if (directory / MANIFEST).is_file() else None
    if existing is not None and existing.fingerprint == fingerprint:
        return existing
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pool-", dir=directory.parent))
    num_files = max(1, min(num_files, len(split.pool_ids)))
    pool_files = []
    for index, chunk in enumerate(np.array_split(split.pool_ids, num_files)):
        name = f"pool-{index:03d}.parquet"
        _write_rows(staging / name, chunk, source.train)
        pool_files.append(name)
    _write_rows(staging / "test.parquet", split.test_ids, source.test)
    mean, std = source.channel_stats()
    manifest = PoolManifest(
        directory=str(directory.resolve()),
        dataset=source.name,
        image_shape=tuple(int(v) for v in source.train.images.shape[1:]),  # type: ignore[arg-type]
        pixel_max=source.pixel_max,
        mean=mean,
        std=std,
        class_names=source.class_names,
        known_classes=split.known_classes,
        pool_files=tuple(pool_files),
        test_file="test.parquet",
        num_pool=len(split.pool_ids),
        num_initial=len(split.initial_ids),
        num_test=len(split.test_ids),
        fingerprint=fingerprint,
    )
    np.save(staging / "initial_ids.npy", split.initial_ids)
    (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1))
    storage.swap_directory(staging, directory)
    return manifest


def _write_rows(path: Path, ids: np.ndarray, split: ImageSplit) -> None:
    images = np.ascontiguousarray(split.images[ids])
    width = int(np.prod(images.shape[1:]))
    image_column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(ids), [None, pa.py_buffer(images.tobytes())])
    table = pa.table({"id": ids.astype(np.int64), "label": split.labels[ids].astype(np.int64), "image": image_column})
    pq.write_table(table, path, row_group_size=8192)


def read_manifest(directory: Path) -> PoolManifest:
    """Read the manifest of a materialised pool."""
    from osal_ray import storage
    from osal_ray.errors import CorruptFile, shown_error

    path = directory / MANIFEST
    fix = f"delete {directory} and run again to rewrite the pool from the data (the run states are kept)"
    raw = storage.read_json(path, dict, "pool manifest", fix)
    try:
        return PoolManifest.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(str(path), f"not a pool manifest ({shown_error(exc)}); {fix}") from None


def pool_paths(manifest: PoolManifest) -> list[str]:
    """Absolute paths of the pool's Parquet files."""
    return [str(Path(manifest.directory) / name) for name in manifest.pool_files]


def initial_ids(manifest: PoolManifest) -> np.ndarray:
    """The ids of the initial labeled set (its OOD members, if any, start as invalid)."""
    return np.load(Path(manifest.directory) / "initial_ids.npy")


def decode_images(column: pa.Array | pa.ChunkedArray, manifest: PoolManifest) -> np.ndarray:
    """Turn a fixed-size-binary image column into uint8 (N, H, W, C) without copying."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = manifest.image_bytes
    buffer = column.buffers()[1]
    flat = np.frombuffer(buffer, dtype=np.uint8, offset=column.offset * width, count=len(column) * width)
    return flat.reshape((len(column), *manifest.image_shape))


def decode_vectors(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Turn a fixed-size-binary column of float32 vectors into (N, dim) float32 without copying."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = np.frombuffer(column.buffers()[1], dtype=np.float32, offset=column.offset * dim * 4, count=len(column) * dim)
    return flat.reshape(len(column), dim)


def vector_column(values: np.ndarray) -> pa.Array:
    """(N, D) float32 -> a fixed-size-binary column (the stored form of a cached feature)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(values.shape[1] * 4), len(values), [None, pa.py_buffer(values.tobytes())])


def read_table(paths: list[str], columns: list[str], ids: np.ndarray | None = None) -> pa.Table:
    """Rows of the given ids (all when ``ids`` is None), only ``columns`` (plus id), sorted by id."""
    dataset = pads.dataset(paths, format="parquet")
    row_filter = None if ids is None else pads.field("id").isin(pa.array(np.asarray(ids, dtype=np.int64)))
    wanted = ["id"] + [c for c in columns if c != "id"]
    return dataset.to_table(columns=wanted, filter=row_filter).sort_by("id")


def read_labeled(paths: list[str], column: str, ids: np.ndarray, labels: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Rows of ``ids`` (``column`` plus id, sorted by id) and their ``labels`` in the same order.

    Every id must be in the pool: a missing one is an error that counts and names them.
    """
    ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    table = read_table(paths, [column], ids)
    row_ids = table.column("id").to_numpy()
    missing = np.setdiff1d(ids, row_ids)
    if len(missing):
        raise ValueError(f"{len(missing)} labeled ids are not in the pool, e.g. {missing[:10].tolist()}")
    order = np.argsort(ids, kind="stable")
    return table, labels[order][np.searchsorted(ids[order], row_ids)]


def read_rows(paths: list[str], manifest: PoolManifest, ids: np.ndarray | None = None, with_labels: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read (ids, images, labels?) of the given ids (all rows when ``ids`` is None), sorted by id."""
    table = read_table(paths, ["image"] + (["label"] if with_labels else []), ids)
    labels = table.column("label").to_numpy() if with_labels else None
    return table.column("id").to_numpy(), decode_images(table.column("image"), manifest), labels


def read_pool_ids(manifest: PoolManifest) -> np.ndarray:
    """Every pool row's id, sorted."""
    return read_table(pool_paths(manifest), []).column("id").to_numpy()


def read_catalog(manifest: PoolManifest, ids: np.ndarray | None = None) -> dict[int, tuple[str, str | None]]:
    """id -> (key, path) of the pool rows ``ids`` (all when None). A pool without those columns (a
    labeled dataset held in memory) has keys that are its ids as text, and no paths."""
    import pyarrow.parquet as pq

    paths = pool_paths(manifest)
    if {"key", "path"} <= set(pq.read_schema(paths[0]).names):
        table = read_table(paths, ["key", "path"], ids)
        return dict(zip(table.column("id").to_pylist(), zip(table.column("key").to_pylist(), table.column("path").to_pylist())))
    every = read_pool_ids(manifest) if ids is None else np.asarray(ids, dtype=np.int64)
    return {int(i): (str(int(i)), None) for i in every}


def read_labels(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, true labels) of every row: what the simulated oracle reads, and nothing else does."""
    table = read_table(paths, ["label"])
    return table.column("id").to_numpy(), table.column("label").to_numpy()


def model_input(table: pa.Table, manifest: PoolManifest, column: str) -> "torch.Tensor":  # noqa: F821
    """A network's input from a batch: the normalised image, or a stored vector column as floats."""
    import torch

    if column == "image":
        return to_model_input(decode_images(table.column("image"), manifest), manifest)
    return torch.from_numpy(decode_vectors(table.column(column), manifest.vector_columns[column]).copy())


def to_model_input(images: "np.ndarray | torch.Tensor", manifest: PoolManifest) -> "torch.Tensor":  # noqa: F821
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W), on the device the images are on."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    x = x.permute(0, 3, 1, 2).float().div_(manifest.pixel_max)
    mean = torch.tensor(manifest.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(manifest.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
