"""Open-set split builders: class counts, OOD ratio, initial set, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from osal_ray.config import DataConfig
from osal_ray.data import build_split, resolve_known_classes
from osal_ray.errors import InputError

CLASSES = tuple(f"c{i}" for i in range(10))
# 100 training samples per class, 20 test samples per class.
TRAIN = np.repeat(np.arange(10), 100)
TEST = np.repeat(np.arange(10), 20)


def test_mismatch_protocol_counts():
    config = DataConfig(known_classes=3, initial_fraction=0.1)
    split = build_split(config, TRAIN, TEST, CLASSES, seed=0)
    assert split.known_classes == (0, 1, 2)
    assert len(split.pool_ids) == 1000  # the whole training set
    assert len(split.initial_ids) == 30  # 10% of each known class
    assert np.bincount(TRAIN[split.initial_ids], minlength=10).tolist() == [10, 10, 10] + [0] * 7
    assert set(split.initial_ids) <= set(split.pool_ids)
    assert len(split.test_ids) == 60 and set(TEST[split.test_ids]) == {0, 1, 2}


def test_mismatch_initial_has_at_least_one_per_class():
    split = build_split(DataConfig(known_classes=2, initial_fraction=0.001), TRAIN, TEST, CLASSES, seed=0)
    assert np.bincount(TRAIN[split.initial_ids], minlength=2)[:2].tolist() == [1, 1]


def test_ood_ratio_protocol_counts():
    config = DataConfig(protocol="ood_ratio", known_classes=2, ood_ratio=0.2, initial_size=50)
    split = build_split(config, TRAIN, TEST, CLASSES, seed=1)
    pool_labels = TRAIN[split.pool_ids]
    n_id = np.isin(pool_labels, [0, 1]).sum()
    n_ood = len(pool_labels) - n_id
    assert n_id == 200 and n_ood == 50  # 200 * 0.2 / 0.8
    init_labels = TRAIN[split.initial_ids]
    assert len(split.initial_ids) == 50
    assert (~np.isin(init_labels, [0, 1])).sum() == 10  # exactly round(50 * 0.2) OOD
    assert set(split.initial_ids) <= set(split.pool_ids)


def test_ood_ratio_zero_is_closed_set():
    split = build_split(DataConfig(protocol="ood_ratio", known_classes=2, ood_ratio=0.0, initial_size=20), TRAIN, TEST, CLASSES, seed=0)
    assert set(TRAIN[split.pool_ids]) == {0, 1}


def test_ood_ratio_needing_more_ood_than_exists():
    config = DataConfig(protocol="ood_ratio", known_classes=5, ood_ratio=0.6, initial_size=20)
    with pytest.raises(InputError, match="data.ood_ratio"):
        build_split(config, TRAIN, TEST, CLASSES, seed=0)


def test_splits_are_a_deterministic_function_of_the_seed():
    config = DataConfig(protocol="ood_ratio", known_classes=2, ood_ratio=0.4, initial_size=30)
    a = build_split(config, TRAIN, TEST, CLASSES, seed=7)
    b = build_split(config, TRAIN, TEST, CLASSES, seed=7)
    c = build_split(config, TRAIN, TEST, CLASSES, seed=8)
    np.testing.assert_array_equal(a.pool_ids, b.pool_ids)
    np.testing.assert_array_equal(a.initial_ids, b.initial_ids)
    assert not np.array_equal(a.initial_ids, c.initial_ids)


def test_known_classes_by_list_names_and_ratio():
    assert resolve_known_classes(DataConfig(known_classes=[7, 2]), CLASSES) == (7, 2)
    assert resolve_known_classes(DataConfig(known_classes=["c4", "c1"]), CLASSES) == (4, 1)
    assert resolve_known_classes(DataConfig(mismatch_ratio=0.3), CLASSES) == (0, 1, 2)


@pytest.mark.parametrize(
    "config, field",
    [
        (DataConfig(known_classes=1), "data.known_classes"),
        (DataConfig(known_classes=10), "data.known_classes"),
        (DataConfig(known_classes=[3]), "data.known_classes"),
        (DataConfig(known_classes=[3, 3]), "data.known_classes"),
        (DataConfig(known_classes=["nope", "c1"]), "data.known_classes"),
        (DataConfig(known_classes=[0, 12]), "data.known_classes"),
        (DataConfig(mismatch_ratio=0.05), "data.mismatch_ratio"),
    ],
)
def test_impossible_known_classes(config, field):
    with pytest.raises(InputError) as info:
        resolve_known_classes(config, CLASSES)
    assert info.value.field == field


def test_train_fraction_subsamples_the_same_ids_for_every_seed():
    config = DataConfig(known_classes=2, train_fraction=0.25)
    a = build_split(config, TRAIN, TEST, CLASSES, seed=0)
    b = build_split(config, TRAIN, TEST, CLASSES, seed=1)
    assert len(a.pool_ids) == 250
    np.testing.assert_array_equal(a.pool_ids, b.pool_ids)
