"""The Parquet pool: images round-trip byte for byte; an identical split is reused, another rewritten."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from osal_ray.config import DataConfig
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import initial_ids, pool_paths, read_rows, to_model_input


def test_pool_round_trip_and_reuse(tmp_path):
    config = DataConfig()
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    manifest = materialize_pool(source, split, tmp_path / "seed_0", num_files=3)
    assert len(manifest.pool_files) == 3 and manifest.num_pool == len(split.pool_ids)
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in pool_paths(manifest)) == len(split.pool_ids)
    assert pq.ParquetFile(pool_paths(manifest)[0]).schema_arrow.names == ["id", "label", "image"]

    wanted = split.pool_ids[[5, 0, 700]]
    ids, images, labels = read_rows(pool_paths(manifest), manifest, wanted, with_labels=True)
    np.testing.assert_array_equal(ids, np.sort(wanted))
    np.testing.assert_array_equal(images, source.train.images[np.sort(wanted)])
    np.testing.assert_array_equal(labels, source.train.labels[np.sort(wanted)])
    np.testing.assert_array_equal(initial_ids(manifest), split.initial_ids)

    x = to_model_input(images, manifest)
    assert tuple(x.shape) == (3, 1, 8, 8)

    stamp = (tmp_path / "seed_0" / "pool-000.parquet").stat().st_mtime_ns
    assert materialize_pool(source, split, tmp_path / "seed_0", num_files=3) == manifest
    assert (tmp_path / "seed_0" / "pool-000.parquet").stat().st_mtime_ns == stamp  # reused, not rewritten

    other = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=1)
    rewritten = materialize_pool(source, other, tmp_path / "seed_0", num_files=3)
    assert rewritten.fingerprint != manifest.fingerprint
    np.testing.assert_array_equal(initial_ids(rewritten), other.initial_ids)


def test_same_split_with_other_names_or_pixels_is_rewritten(tmp_path):
    import dataclasses

    config = DataConfig()
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    manifest = materialize_pool(source, split, tmp_path / "p", num_files=1)
    renamed = dataclasses.replace(source, class_names=tuple(f"c{i}" for i in range(10)))
    assert materialize_pool(renamed, split, tmp_path / "p", num_files=1).known_class_names() == ("c3", "c8")
    brighter = dataclasses.replace(source, train=dataclasses.replace(source.train, images=source.train.images // 2))
    rewritten = materialize_pool(brighter, split, tmp_path / "p", num_files=1)
    assert rewritten.fingerprint != manifest.fingerprint
    _, images, _ = read_rows(pool_paths(rewritten), rewritten, split.pool_ids[:3])
    np.testing.assert_array_equal(images, source.train.images[np.sort(split.pool_ids[:3])] // 2)


def test_parquet_reader_choice_by_pool_size():
    from osal_ray.config import ScoringConfig
    from osal_ray.data.ray_pass import V2_READER_FROM_ROWS, use_v2_reader

    auto = ScoringConfig()
    assert auto.parquet_reader == "auto"
    assert not use_v2_reader(auto, V2_READER_FROM_ROWS - 1)
    assert use_v2_reader(auto, V2_READER_FROM_ROWS)
    assert use_v2_reader(ScoringConfig(parquet_reader="v2"), 10)
    assert not use_v2_reader(ScoringConfig(parquet_reader="v1"), 10_000_000)


def test_read_labeled_aligns_labels_and_counts_every_missing_id(tmp_path):
    import pytest

    from osal_ray.data.pool import read_labeled

    config = DataConfig()
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    manifest = materialize_pool(source, split, tmp_path / "p", num_files=2)
    ids = split.pool_ids[[40, 3, 17]]
    table, labels = read_labeled(pool_paths(manifest), "image", ids, np.array([7, 8, 9]))
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.sort(ids))
    np.testing.assert_array_equal(labels, np.array([7, 8, 9])[np.argsort(ids)])
    absent = np.arange(10**6, 10**6 + 12)
    with pytest.raises(ValueError, match="^12 labeled ids are not in the pool"):
        read_labeled(pool_paths(manifest), "image", np.concatenate([ids, absent]), np.zeros(15))
