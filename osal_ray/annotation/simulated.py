"""The ``simulated`` annotator: the dataset's true labels, at once (a labeled dataset, or an image
pool's truth file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osal_ray.annotation.backends import AnnotatorBackend, AnnotatorSetup, register_annotator
from osal_ray.annotation.contract import UNKNOWN, Annotator
from osal_ray.config import ExperimentConfig
from osal_ray.data.image_pool import ImagePoolSource
from osal_ray.data.pool import PoolManifest, pool_paths, read_labels
from osal_ray.errors import InputError


class SimulatedOracle(Annotator):
    """Reveals true labels at once: known classes map to 0..K-1, every other class to ``UNKNOWN``."""

    kind = "simulated"

    def __init__(self, ids: np.ndarray, labels: np.ndarray, known_classes: tuple[int, ...]) -> None:
        order = np.argsort(ids)
        self._ids = np.asarray(ids, dtype=np.int64)[order]
        self._labels = np.asarray(labels, dtype=np.int64)[order]
        self.known_classes = tuple(known_classes)
        lookup = np.full(max(int(self._labels.max(initial=0)) + 1, max(known_classes) + 1), UNKNOWN, dtype=np.int64)
        lookup[list(known_classes)] = np.arange(len(known_classes))
        valid = self._labels >= 0
        self._known_index = np.full(len(self._labels), UNKNOWN, dtype=np.int64)
        self._known_index[valid] = lookup[self._labels[valid]]

    @classmethod
    def from_pool(cls, manifest: PoolManifest) -> "SimulatedOracle":
        """The truth stored with a labeled dataset's pool."""
        ids, labels = read_labels(pool_paths(manifest))
        return cls(ids, labels, manifest.known_classes)

    @classmethod
    def from_truth_file(cls, manifest: PoolManifest, path: str) -> "SimulatedOracle":
        """The truth of an ``image_pool`` from a CSV of true labels (``key,label`` or ``path,label``)."""
        from osal_ray.annotation.labels import read_truth_file

        ids, labels = read_truth_file(manifest, Path(path))
        return cls(ids, labels, manifest.known_classes)

    @property
    def has_truth(self) -> bool:
        return True

    @property
    def num_known(self) -> int:
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
        """0..K-1 for known-class samples, ``UNKNOWN`` for the others."""
        return self._known_index[self._positions(ids)]

    def answers(self, round_index: int, ids: np.ndarray) -> np.ndarray:
        return self.known_index(ids)


@register_annotator
class SimulatedBackend(AnnotatorBackend):
    """``oracle.kind: simulated``: a labeled dataset's own labels, or an image pool's ``oracle.truth_file``."""

    name = "simulated"
    human = False

    def check(self, config: ExperimentConfig, source: object) -> None:
        """An image pool has no labels of its own: it needs ``oracle.truth_file``."""
        if config.data.dataset != ImagePoolSource.name:
            return
        if config.oracle.truth_file is None:
            raise InputError("oracle.kind", "image_pool has no true labels to simulate an annotator with; use oracle.kind: files "
                                            "(people label) or give oracle.truth_file (a CSV of key,label or path,label)")
        if not Path(config.oracle.truth_file).is_file():
            raise InputError("oracle.truth_file", f"no such file: {config.oracle.truth_file}")

    def create(self, setup: AnnotatorSetup) -> list[Annotator]:
        if setup.config.data.dataset == ImagePoolSource.name:  # one pool, shared by every seed
            oracle = SimulatedOracle.from_truth_file(setup.manifests[0], setup.config.oracle.truth_file)
            return [oracle] * len(setup.manifests)
        return [SimulatedOracle.from_pool(m) for m in setup.manifests]
