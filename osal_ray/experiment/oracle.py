"""The simulated annotator: it alone reads the pool's true labels."""

from __future__ import annotations

import numpy as np

from osal_ray.data.pool import PoolManifest, pool_paths, read_labels


class Oracle:
    """Reveals true labels of queried ids; known classes map to 0..K-1, unknown to -1."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, known_classes: tuple[int, ...]) -> None:
        order = np.argsort(ids)
        self._ids = np.asarray(ids, dtype=np.int64)[order]
        self._labels = np.asarray(labels, dtype=np.int64)[order]
        self.known_classes = tuple(known_classes)
        lookup = np.full(max(int(self._labels.max(initial=0)) + 1, max(known_classes) + 1), -1, dtype=np.int64)
        lookup[list(known_classes)] = np.arange(len(known_classes))
        self._known_index = lookup[self._labels]

    @classmethod
    def from_pool(cls, manifest: PoolManifest) -> "Oracle":
        ids, labels = read_labels(pool_paths(manifest))
        return cls(ids, labels, manifest.known_classes)

    @property
    def pool_ids(self) -> np.ndarray:
        return self._ids

    @property
    def num_known(self) -> int:
        """How many pool samples belong to a known class (the denominator of recall)."""
        return int((self._known_index >= 0).sum())

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        positions = np.searchsorted(self._ids, ids)
        if len(ids) and (positions.max() >= len(self._ids) or not np.array_equal(self._ids[positions], ids)):
            raise KeyError("asked to label ids that are not in the pool")
        return positions

    def reveal(self, ids: np.ndarray) -> np.ndarray:
        """The original dataset labels of ``ids``."""
        return self._labels[self._positions(ids)]

    def known_index(self, ids: np.ndarray) -> np.ndarray:
        """0..K-1 for known-class samples, -1 for unknown (OOD)."""
        return self._known_index[self._positions(ids)]
