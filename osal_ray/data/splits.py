"""Open-set splits for the two protocols of the literature.

(a) ``mismatch``: the pool is the whole training set; the initial labeled set is
    ``initial_fraction`` of each known class (at least one sample per class) and holds no OOD.
(b) ``ood_ratio``: every known-class training sample is in the pool, plus unknown-class samples
    subsampled so that they are a fraction ``r`` of the pool (|OOD| = |ID| r / (1 - r)); the
    initial set of ``initial_size`` is drawn from that pool with exactly round(size * r) OOD
    among it (VLPure-AL Table 2), and those OOD samples start in the invalid set.

Splits are a deterministic function of the dataset labels, the config and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osal_ray.config import DataConfig
from osal_ray.data.datasets import FIXED_SPLIT_SEED
from osal_ray.errors import InputError


@dataclass(frozen=True)
class OpenSetSplit:
    """Which classes are known and which sample ids form the pool, the initial set and the test set."""

    known_classes: tuple[int, ...]
    pool_ids: np.ndarray
    initial_ids: np.ndarray
    test_ids: np.ndarray

    @property
    def num_known(self) -> int:
        return len(self.known_classes)


def resolve_known_classes(config: DataConfig, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The known classes as label ids: from ``mismatch_ratio``, a count (first K) or a list."""
    num_classes = len(class_names)
    if config.mismatch_ratio is not None:
        count = int(round(config.mismatch_ratio * num_classes))
        if count < 2 or count >= num_classes:
            raise InputError(
                "data.mismatch_ratio",
                f"{config.mismatch_ratio} of {num_classes} classes gives {count} known classes; need 2..{num_classes - 1}",
            )
        return tuple(range(count))
    if num_classes < 3:
        raise InputError("data.known_classes", f"the dataset has {num_classes} classes; an open-set split needs at least 2 "
                                               "known classes and at least one class that stays unknown (3 or more classes)")
    spec = config.known_classes
    if spec is None:
        raise InputError("data.known_classes", "set a count, a list of class ids or names, or data.mismatch_ratio")
    if isinstance(spec, int):
        if spec < 2 or spec >= num_classes:
            raise InputError("data.known_classes", f"{spec} known classes of {num_classes}; need 2..{num_classes - 1} "
                                                   "(at least one class must stay unknown)")
        return tuple(range(spec))
    known: list[int] = []
    for item in spec:
        if isinstance(item, str):
            if item not in class_names:
                raise InputError("data.known_classes", f"unknown class name {item!r}; classes: {list(class_names)}")
            known.append(class_names.index(item))
        else:
            if not 0 <= item < num_classes:
                raise InputError("data.known_classes", f"class id {item} is outside 0..{num_classes - 1}")
            known.append(item)
    if len(set(known)) != len(known):
        raise InputError("data.known_classes", f"repeated classes in {spec}")
    if len(known) < 2 or len(known) >= num_classes:
        raise InputError("data.known_classes", f"{len(known)} known classes of {num_classes}; need 2..{num_classes - 1} "
                                               "(at least one class must stay unknown)")
    return tuple(known)


def subsample_training(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Ids of a stratified ``fraction`` of the training set, the same for every seed."""
    if fraction >= 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(FIXED_SPLIT_SEED + 1)
    keep = [
        rng.choice(members, size=max(1, int(round(len(members) * fraction))), replace=False)
        for members in (np.flatnonzero(labels == cls) for cls in np.unique(labels))
    ]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def build_split(
    config: DataConfig,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    class_names: tuple[str, ...],
    seed: int,
) -> OpenSetSplit:
    """Build the open-set split of ``config.protocol`` for ``seed``."""
    known = resolve_known_classes(config, class_names)
    candidates = subsample_training(train_labels, config.train_fraction)
    is_known = np.isin(train_labels[candidates], known)
    id_ids, ood_ids = candidates[is_known], candidates[~is_known]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x05A1]))
    test_ids = np.flatnonzero(np.isin(test_labels, known)).astype(np.int64)
    if len(test_ids) == 0:
        raise InputError("data.known_classes", "the test set holds no image of the known classes")

    if config.protocol == "mismatch":
        initial = [
            _choose(rng, members, max(1, int(round(len(members) * config.initial_fraction))))
            for members in (id_ids[train_labels[id_ids] == cls] for cls in known)
        ]
        return OpenSetSplit(known, candidates, np.sort(np.concatenate(initial)), test_ids)

    if config.protocol == "ood_ratio":
        ratio = config.ood_ratio
        n_ood = int(round(len(id_ids) * ratio / (1.0 - ratio)))
        if n_ood > len(ood_ids):
            raise InputError(
                "data.ood_ratio",
                f"{ratio} needs {n_ood} unknown-class samples beside {len(id_ids)} known ones, "
                f"but the training set has only {len(ood_ids)}",
            )
        pool_ood = _choose(rng, ood_ids, n_ood)
        pool = np.sort(np.concatenate([id_ids, pool_ood]))
        if config.initial_size >= len(pool):
            raise InputError("data.initial_size", f"{config.initial_size} is not smaller than the pool ({len(pool)})")
        n_init_ood = int(round(config.initial_size * ratio))
        initial = np.concatenate(
            [_choose(rng, id_ids, config.initial_size - n_init_ood), _choose(rng, pool_ood, n_init_ood)]
        )
        return OpenSetSplit(known, pool, np.sort(initial), test_ids)

    raise InputError("data.protocol", f"unknown protocol {config.protocol!r}; allowed: mismatch, ood_ratio")


def _choose(rng: np.random.Generator, ids: np.ndarray, count: int) -> np.ndarray:
    if count > len(ids):
        raise InputError("data", f"cannot draw {count} samples from {len(ids)}")
    return np.sort(rng.choice(ids, size=count, replace=False)).astype(np.int64)
