"""``image_pool``: a user's own images, mostly unlabeled, turned into the Parquet pool the loop reads.

Layout under ``data.root``::

    unlabeled/            the pool (any nesting)
    labeled/<class>/      the initial labeled examples; the folder names are the known classes
    labeled/unknown/      examples known to be out of scope (``data.unknown_label``): the invalid set at start
    test/<class>/         optional: known-class test images, for accuracy

Loading (``load_image_pool``) only lists the files. ``materialize_image_pool`` then needs Ray: new
or changed files are read, hashed and decoded in a Ray Data pass (parallel tasks, streamed to a
Parquet store batch by batch, so the driver never holds the decoded folder), unreadable files go
to ``skipped.csv`` with their reason, byte-identical files collapse to one sample
(``duplicates.csv``), and the pool is written from the store.

Between rounds the folder may change. Every run rescans it: a file seen before (same path, size
and modification time) is not decoded again; new images join the pool with ids of their own (ids
come from content hashes, nothing is renumbered). The pool files keep every sample ever seen, so
that a labeled or queried image whose file was deleted can still be trained on; samples whose
files are gone are listed in ``absent_ids.npy`` and are no longer candidates.
"""

from __future__ import annotations

import csv
import io
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from osal_ray.config import SKIP, UNSAFE_NAME_CHARACTERS, DataConfig
from osal_ray.data.datasets import register_dataset
from osal_ray.data.image_files import FileEntry, decode_file, key_to_id, list_files
from osal_ray.data.pool import MANIFEST, PoolManifest, read_manifest
from osal_ray import storage
from osal_ray.errors import CorruptFile, InputError, shown

UNLABELED, LABELED, TEST = "unlabeled", "labeled", "test"
INDEX_FILE = "index.parquet"
SKIPPED_FILE = "skipped.csv"
DUPLICATES_FILE = "duplicates.csv"
ABSENT_FILE = "absent_ids.npy"
INITIAL_LABELS_FILE = "initial_labels.npy"
POOL_ROWS_PER_FILE = 50_000


@dataclass(frozen=True)
class ImagePoolSource:
    """A listed (not yet decoded) image pool folder."""

    root: Path
    class_names: tuple[str, ...]  # the known classes, sorted: label i is class_names[i]
    unknown_label: str
    entries: tuple[FileEntry, ...]
    image_size: int
    channels: int | None
    unlisted: tuple[tuple[str, str], ...] = ()  # (path, reason) of names that are no readable file (skipped.csv)

    name = "image_pool"

    @property
    def has_test(self) -> bool:
        return any(e.role == TEST for e in self.entries)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@register_dataset("image_pool")
def load_image_pool(config: DataConfig) -> ImagePoolSource:
    """List ``data.root`` and check its layout (no decoding, no Ray); InputError names what is wrong."""
    if config.root is None:
        raise InputError("data.root", "image_pool needs data.root, a folder with unlabeled/ and labeled/<class>/")
    root = Path(config.root)
    if not root.is_dir():
        raise InputError("data.root", f"{root} is not a directory")
    for folder in (UNLABELED, LABELED):
        if not (root / folder).is_dir():
            raise InputError("data.root", f"{root} has no {folder}/ folder (layout: unlabeled/, labeled/<class>/, optional test/<class>/)")
    unknown = config.unknown_label
    classes = sorted(d.name for d in (root / LABELED).iterdir() if d.is_dir() and not d.name.startswith((".", "~")) and d.name != unknown)
    check_class_names(root / LABELED, classes, unknown)
    if len(classes) < 2:
        raise InputError("data.root", f"{root / LABELED} holds {len(classes)} class folder(s) {classes} besides "
                                      f"{unknown}/; give at least 2 known classes, each a folder of example images")
    unlisted: list[tuple[str, str]] = []
    entries = list_files(root, UNLABELED, UNLABELED, with_class=False, problems=unlisted)
    for role in (LABELED, TEST):
        if not (root / role).is_dir():
            continue
        for entry in list_files(root, role, role, with_class=True, problems=unlisted):
            if entry.label is None:
                raise InputError("data.root", f"{root / entry.path}: files in {role}/ belong in a class folder, {role}/<class>/")
            if role == TEST and entry.label not in classes:
                continue  # test images of other classes: accuracy is measured on the known classes only
            entries.append(entry)
    empty = [c for c in classes if not any(e.role == LABELED and e.label == c for e in entries)]
    if empty:
        raise InputError("data.root", f"class folder(s) {empty} under {root / LABELED} hold no file; each known class needs examples")
    if not any(e.role == UNLABELED for e in entries):
        raise InputError("data.root", f"{root / UNLABELED} holds no file: nothing to choose from")
    return ImagePoolSource(root.resolve(), tuple(classes), unknown, tuple(entries), config.image_size, config.channels,
                           tuple(unlisted))


# Characters a class name (a label people type, a CSV cell) may not hold: CSV's separators and quotes, line breaks.


def check_class_names(labeled: Path, classes: list[str], unknown: str) -> None:
    """Refuse ``labeled/<class>`` folder names that people could not type back as a label: leading or
    trailing spaces, CSV-breaking characters, the reserved ``skip``, or names that differ only by case
    (from each other, from the unknown label or from ``skip``). InputError naming the folder."""
    seen = {SKIP.casefold(): SKIP, unknown.casefold(): unknown}
    for name in classes:
        folder = repr(str(labeled / name))
        if name != name.strip():
            raise InputError("data.root", f"{folder}: a class folder name may not start or end with spaces; rename it {name.strip()!r}")
        if UNSAFE_NAME_CHARACTERS & set(name) or not name.isprintable():
            raise InputError("data.root", f"{folder}: a class folder name may not hold commas, quotes, tabs, line breaks or "
                                          "other control characters (it is a label in CSV files); rename it")
        if name == SKIP:
            raise InputError("data.root", f"{folder}: '{SKIP}' is reserved (a label for unusable images)")
        clash = seen.get(name.casefold())
        if clash is not None:
            raise InputError("data.root", f"{folder}: differs from {clash!r} only by case (labels would be ambiguous); "
                                          "rename or merge the folders")
        seen[name.casefold()] = name


@dataclass
class ImagePoolReport:
    """What a scan found: counts, skipped files and collapsed duplicates."""

    decoded: int
    reused: int
    skipped: list[tuple[str, str]]
    duplicates: list[tuple[str, str, str]]
    num_unlabeled: int
    num_labeled: int
    num_invalid: int
    num_test: int
    num_absent: int
    seconds: float

    def summary(self) -> str:
        parts = [f"{self.num_unlabeled} unlabeled, {self.num_labeled} labeled known, {self.num_invalid} labeled unknown, "
                 f"{self.num_test} test images"]
        parts.append(f"decoded {self.decoded} new file(s) in {self.seconds:.1f}s, {self.reused} unchanged")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable file(s) skipped (skipped.csv)")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} byte-identical file(s) collapsed (duplicates.csv)")
        if self.num_absent:
            parts.append(f"{self.num_absent} sample(s) whose files are gone left the candidates")
        return "; ".join(parts)


def materialize_image_pool(source: ImagePoolSource, data_dir: Path, output_dir: Path,
                           log: Callable[[str], None] = print) -> tuple[PoolManifest, ImagePoolReport]:
    """Decode what is new (Ray Data), then write the pool under ``data_dir/pool`` unless unchanged."""
    started = time.perf_counter()
    store = data_dir / f"image_store-{source.image_size}"
    index, decoded = _update_store(source, store, log)
    current = {e.path: e for e in source.entries}
    rows = [dict(r) for r in index if r["path"] in current]
    for row in rows:
        entry = current[row["path"]]
        row.update(role=entry.role, label=entry.label)
    skipped = sorted([(r["path"], r["error"]) for r in rows if r["error"]] + list(source.unlisted))
    good = [r for r in rows if not r["error"]]
    samples, duplicates = _collapse(good, source)
    if not any(s["role"] in (UNLABELED, LABELED) for s in samples):
        raise InputError("data.root", f"no usable image in {source.root}: every file was unreadable (see {output_dir / SKIPPED_FILE})")
    _write_csv(output_dir / SKIPPED_FILE, ("path", "reason"), skipped)
    _write_csv(output_dir / DUPLICATES_FILE, ("key", "kept_path", "duplicate_path"), duplicates)
    channels = _channels(source, store, samples)
    manifest = _write_pool(source, store, samples, data_dir / "pool", channels)
    report = ImagePoolReport(
        decoded=decoded, reused=len(rows) - decoded, skipped=skipped, duplicates=duplicates,
        num_unlabeled=sum(s["role"] == UNLABELED for s in samples),
        num_labeled=sum(s["role"] == LABELED and s["label"] != source.unknown_label for s in samples),
        num_invalid=sum(s["role"] == LABELED and s["label"] == source.unknown_label for s in samples),
        num_test=manifest.num_test, num_absent=len(np.load(Path(manifest.directory) / ABSENT_FILE)),
        seconds=time.perf_counter() - started,
    )
    return manifest, report


def _collapse(rows: list[dict], source: ImagePoolSource) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """One sample per key among pool files (labeled wins over unlabeled), one per key among test files.

    Two labeled copies of the same bytes with different labels are a contradiction a person must
    resolve: refused, naming both files.
    """
    samples: dict[tuple[bool, str], dict] = {}
    duplicates = []
    for row in sorted(rows, key=lambda r: (r["role"] != LABELED, r["path"])):
        slot = (row["role"] == TEST, row["key"])
        kept = samples.get(slot)
        if kept is None:
            samples[slot] = row
            continue
        if row["role"] == kept["role"] and row["label"] != kept["label"]:
            raise InputError("data.root", f"{source.root / kept['path']} and {source.root / row['path']} are the same image "
                                          f"with different labels ({kept['label']!r}, {row['label']!r}); keep one")
        duplicates.append((row["key"], kept["path"], row["path"]))
    return list(samples.values()), sorted(duplicates)


def _update_store(source: ImagePoolSource, store: Path, log: Callable[[str], None]) -> tuple[list[dict], int]:
    """The decode index (path, size, mtime, key, error) of every listed file; new files decoded into the store."""
    store.mkdir(parents=True, exist_ok=True)
    index_path = store / INDEX_FILE
    known: dict[tuple[str, int, int], dict] = {}
    if index_path.is_file():
        for row in pq.read_table(index_path).to_pylist():
            known[(row["path"], row["size"], row["mtime_ns"])] = row
    fresh = [e for e in source.entries if (e.path, e.size, e.mtime_ns) not in known]
    stored_keys = set(_stored_keys(store))
    if fresh:
        new_rows = _decode(source, fresh, store, stored_keys, log)
        for row in new_rows:
            known[(row["path"], row["size"], row["mtime_ns"])] = row
        _write_table_atomic(pa.Table.from_pylist(list(known.values()), schema=_INDEX_SCHEMA), index_path)
    rows = [known[(e.path, e.size, e.mtime_ns)] for e in source.entries]
    return rows, len(fresh)


_INDEX_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                           ("key", pa.string()), ("error", pa.string())])


def _stored_keys(store: Path) -> list[str]:
    parts = sorted(store.glob("images-*.parquet"))
    return pq.read_table(parts, columns=["key"]).column("key").to_pylist() if parts else []


def _decode_batch(batch: pa.Table, root: str, size: int) -> pa.Table:
    """``map_batches`` function: a batch of relative paths -> key, decoded image bytes, gray flag, error."""
    width = size * size * 3
    keys, images, grays, errors = [], [], [], []
    for path in batch.column("path").to_pylist():
        result = decode_file(root, path, size)
        keys.append(result.get("key"))
        errors.append(result.get("error"))
        image = result.get("image")
        images.append(image.tobytes() if image is not None else bytes(width))
        grays.append(bool(result.get("gray", False)))
    return pa.table({"path": batch.column("path"), "key": pa.array(keys, pa.string()), "image": pa.array(images, pa.binary(width)),
                     "gray": pa.array(grays, pa.bool_()), "error": pa.array(errors, pa.string())})


def _decode(source: ImagePoolSource, entries: list[FileEntry], store: Path, stored_keys: set[str],
            log: Callable[[str], None]) -> list[dict]:
    """Decode ``entries`` in a Ray Data pass; new images go to one more store part, written atomically."""
    import ray.data

    by_path = {e.path: e for e in entries}
    blocks = max(1, min(len(entries), max(4, len(entries) // 256)))
    # Tasks of half a CPU: decoding is CPU work, and the driver's consumer needs no Ray CPU.
    dataset = ray.data.from_items([{"path": e.path} for e in entries], override_num_blocks=blocks).map_batches(
        _decode_batch, fn_kwargs={"root": str(source.root), "size": source.image_size}, batch_size=64, num_cpus=0.5,
        batch_format="pyarrow",
    )
    width = source.image_size * source.image_size * 3
    schema = pa.schema([("key", pa.string()), ("id", pa.int64()), ("image", pa.binary(width)), ("gray", pa.bool_())])
    part = store / f"images-{int(time.time() * 1000):013d}-{os.getpid()}.parquet"
    writing = part.with_name("." + part.name)
    rows: list[dict] = []
    written: set[str] = set()
    started = last = time.perf_counter()
    with pq.ParquetWriter(writing, schema) as writer:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            keys, errors = batch.column("key").to_pylist(), batch.column("error").to_pylist()
            new = [i for i, (key, error) in enumerate(zip(keys, errors)) if error is None and key not in stored_keys and key not in written]
            if new:
                chosen = batch.take(pa.array(new, pa.int64()))
                writer.write_table(pa.table({
                    "key": chosen.column("key"),
                    "id": pa.array([key_to_id(keys[i]) for i in new], type=pa.int64()),
                    "image": chosen.column("image"),
                    "gray": chosen.column("gray"),
                }, schema=schema))
                written.update(keys[i] for i in new)
            for path, key, error in zip(batch.column("path").to_pylist(), keys, errors):
                entry = by_path[path]
                rows.append({"path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns, "key": key, "error": error})
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                log(f"image_pool: decoded {len(rows)}/{len(entries)} files ({len(rows) / (last - started):.0f}/s)")
    if written:
        storage.publish_file(writing, part)
    else:
        writing.unlink()
    _check_id_collisions(store)
    return rows


def _check_id_collisions(store: Path) -> None:
    parts = sorted(store.glob("images-*.parquet"))
    table = pq.read_table(parts, columns=["key", "id"]) if parts else None
    if table is None:
        return
    ids = table.column("id").to_numpy()
    if len(np.unique(ids)) != len(set(table.column("key").to_pylist())):
        raise RuntimeError(f"two different images share a 60-bit id in {store}; please report this (it should not happen)")


def _channels(source: ImagePoolSource, store: Path, samples: list[dict]) -> int:
    """``data.channels``, else 1 when every image is grayscale and 3 otherwise; fixed at the first scan."""
    decided = store / "channels.json"
    if source.channels is not None:
        return source.channels
    if decided.is_file():
        channels = storage.read_json(decided, dict, "channel record", "delete it to decide again from the images").get("channels")
        if channels not in (1, 3):
            raise CorruptFile(str(decided), f"'channels' is {shown(channels)}, expected 1 or 3; delete it to decide again from the images")
        return channels
    keys = {s["key"] for s in samples}
    parts = sorted(store.glob("images-*.parquet"))
    flags = pq.read_table(parts, columns=["key", "gray"]).to_pylist()
    channels = 1 if all(row["gray"] for row in flags if row["key"] in keys) else 3
    storage.write_bytes(decided, json.dumps({"channels": channels}).encode())
    return channels


def _write_pool(source: ImagePoolSource, store: Path, samples: list[dict], directory: Path, channels: int) -> PoolManifest:
    """The Parquet pool (every pool sample ever seen), the test set, the initial labels and the manifest."""
    previous = read_manifest(directory) if (directory / MANIFEST).is_file() else None
    present = {s["key"]: s for s in samples if s["role"] != TEST}
    test = {s["key"]: s for s in samples if s["role"] == TEST}
    same_store = previous is not None and previous.image_shape[0] == source.image_size
    kept_before = _previous_pool_rows(previous) if same_store else {}
    pool_rows = {**kept_before, **{k: (s["path"], _initial_label(s, source)) for k, s in present.items()}}
    absent = sorted(key_to_id(k) for k in pool_rows if k not in present)
    fingerprint = hashlib.sha256(json.dumps([sorted(pool_rows.items()), sorted((k, s["path"]) for k, s in test.items()),
                                             channels, source.image_size, source.class_names, absent]).encode()).hexdigest()[:16]
    if previous is not None and previous.fingerprint == fingerprint:
        return previous
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pool-", dir=directory.parent))
    images = _ImageReader(store, source.image_size, channels)
    keys = sorted(pool_rows, key=key_to_id)
    pool_files = []
    for index, start in enumerate(range(0, len(keys), POOL_ROWS_PER_FILE)):
        chunk = keys[start : start + POOL_ROWS_PER_FILE]
        name = f"pool-{index:03d}.parquet"
        _write_rows(staging / name, chunk, [pool_rows[k][0] for k in chunk], [-1] * len(chunk), images)
        pool_files.append(name)
    test_keys = sorted(test, key=key_to_id)
    _write_rows(staging / "test.parquet", test_keys, [test[k]["path"] for k in test_keys],
                [source.class_names.index(test[k]["label"]) for k in test_keys], images)
    initial = [k for k in keys if pool_rows[k][1] is not None]
    np.save(staging / "initial_ids.npy", np.array([key_to_id(k) for k in initial], dtype=np.int64))
    np.save(staging / INITIAL_LABELS_FILE, np.array([pool_rows[k][1] for k in initial], dtype=np.int64))
    np.save(staging / ABSENT_FILE, np.array(absent, dtype=np.int64))
    mean, std = images.channel_stats(keys)
    manifest = PoolManifest(
        directory=str(directory.resolve()), dataset=source.name, image_shape=(source.image_size, source.image_size, channels),
        pixel_max=255.0, mean=mean, std=std, class_names=source.class_names,
        known_classes=tuple(range(len(source.class_names))), pool_files=tuple(pool_files), test_file="test.parquet",
        num_pool=len(keys), num_initial=len(initial), num_test=len(test_keys), fingerprint=fingerprint,
    )
    (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1))
    storage.swap_directory(staging, directory)
    return manifest


def _initial_label(sample: dict, source: ImagePoolSource) -> int | None:
    """0..K-1 for a labeled known example, -1 for a labeled unknown one, None for an unlabeled image."""
    if sample["role"] != LABELED:
        return None
    return -1 if sample["label"] == source.unknown_label else source.class_names.index(sample["label"])


def _previous_pool_rows(previous: PoolManifest | None) -> dict[str, tuple[str, int | None]]:
    """Every sample of the previous pool (kept even if its file is gone), with its initial label."""
    if previous is None or previous.dataset != ImagePoolSource.name:
        return {}
    folder = Path(previous.directory)
    table = pq.read_table([str(folder / f) for f in previous.pool_files], columns=["key", "path"])
    initial = dict(zip(np.load(folder / "initial_ids.npy").tolist(), np.load(folder / INITIAL_LABELS_FILE).tolist()))
    return {key: (path, initial.get(key_to_id(key))) for key, path in zip(table.column("key").to_pylist(), table.column("path").to_pylist())}


class _ImageReader:
    """Decoded images from the store by key, as (N, H, W, channels) uint8."""

    def __init__(self, store: Path, size: int, channels: int) -> None:
        self.parts = sorted(str(p) for p in store.glob("images-*.parquet"))
        self.size, self.channels = size, channels

    def read(self, keys: list[str]) -> np.ndarray:
        import pyarrow.dataset as pads

        if not keys:
            return np.zeros((0, self.size, self.size, self.channels), dtype=np.uint8)
        table = pads.dataset(self.parts, format="parquet").to_table(columns=["key", "image"], filter=pads.field("key").isin(keys))
        found = {k: i for i, k in enumerate(table.column("key").to_pylist())}
        column = table.column("image").combine_chunks()
        flat = np.frombuffer(column.buffers()[1], dtype=np.uint8, offset=column.offset * self.size * self.size * 3,
                             count=len(column) * self.size * self.size * 3).reshape(len(column), self.size, self.size, 3)
        rgb = flat[[found[k] for k in keys]]
        if self.channels == 3:
            return rgb
        # ITU-R 601-2 luma, as Pillow's convert("L"): exact for gray images (R = G = B).
        wide = rgb.astype(np.uint32)
        luma = (wide[..., 0] * 299 + wide[..., 1] * 587 + wide[..., 2] * 114 + 500) // 1000
        return luma.astype(np.uint8)[..., None]

    def channel_stats(self, keys: list[str], chunk: int = 16_384) -> tuple[tuple[float, ...], tuple[float, ...]]:
        total, squares, count = np.zeros(self.channels), np.zeros(self.channels), 0
        for start in range(0, len(keys), chunk):
            pixels = self.read(keys[start : start + chunk]).reshape(-1, self.channels).astype(np.float64) / 255.0
            total += pixels.sum(axis=0)
            squares += (pixels**2).sum(axis=0)
            count += len(pixels)
        mean = total / max(count, 1)
        std = np.maximum(np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0)), 1e-3)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _write_rows(path: Path, keys: list[str], paths: list[str], labels: list[int], images: _ImageReader) -> None:
    """(id, key, path, label, image) rows, read from the store in chunks."""
    schema = pa.schema([("id", pa.int64()), ("key", pa.string()), ("path", pa.string()), ("label", pa.int64()),
                        ("image", pa.binary(images.size * images.size * images.channels))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(keys), 1), 8192):
            chunk = keys[start : start + 8192]
            pixels = images.read(chunk)
            image_column = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(images.size * images.size * images.channels), len(chunk), [None, pa.py_buffer(pixels.tobytes())])
            writer.write_table(pa.table({
                "id": pa.array([key_to_id(k) for k in chunk], type=pa.int64()), "key": chunk,
                "path": paths[start : start + 8192], "label": pa.array(labels[start : start + 8192], type=pa.int64()),
                "image": image_column,
            }, schema=schema))


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    storage.write_bytes(path, out.getvalue().encode("utf-8"))


def _write_table_atomic(table: pa.Table, path: Path) -> None:
    storage.write_file(path, lambda tmp: pq.write_table(table, tmp))


def read_absent_ids(manifest: PoolManifest) -> np.ndarray:
    """Ids of pool samples whose files are gone (not candidates any more); empty for other datasets."""
    path = Path(manifest.directory) / ABSENT_FILE
    return np.load(path) if path.is_file() else np.empty(0, dtype=np.int64)


def read_initial_labels(manifest: PoolManifest) -> np.ndarray | None:
    """Known index (or -1) of each initial id when the pool defines them (image_pool); None otherwise."""
    path = Path(manifest.directory) / INITIAL_LABELS_FILE
    return np.load(path) if path.is_file() else None
