"""Who labels the queried samples: the annotator interface, and the simulated annotator.

Words used throughout: a *known* sample belongs to one of the K known classes (label 0..K-1);
an *unknown* sample (out-of-distribution, OOD) belongs to none of them, and once labeled it joins
the *invalid* set (the detector's class K); a *skipped* sample is one a person marked unusable
(``skip``): it leaves the pool and costs no budget.

Every round goes through the same code whoever labels: the loop selects a batch, the runner
publishes the open requests (``publish``), and the loop asks for ``answers``. The simulated
annotator answers at once from the ground truth; a human annotator (``osal_ray.annotation``)
answers once people have labeled every queried sample, possibly in a later invocation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osal_ray.data.pool import PoolManifest, pool_paths, read_labels

UNKNOWN = -1  # answer for an out-of-distribution sample: it joins the invalid set
SKIPPED = -2  # answer for an unusable image: it leaves the pool, costs no budget


@dataclass(frozen=True)
class QueryRequest:
    """One trajectory's open batch: which samples it asks about, in rank order, and their scores;
    with the model's guess of each (0..K-1, ``UNKNOWN``) and how sure it is, where it made one."""

    strategy: str
    seed: int
    round: int
    ids: tuple[int, ...]
    scores: tuple[float, ...]
    predictions: tuple[int, ...] | None = None
    prediction_scores: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Correction:
    """A label changed after its round closed: sample ``id`` of ``round`` is now ``answer``."""

    name: str  # the correction's record, unique and stable (a trajectory applies each once)
    round: int
    id: int
    answer: int  # 0..K-1, UNKNOWN or SKIPPED
    label: str
    previous: str


class Annotator(ABC):
    """Labels queried samples; ``answers`` are known-class indices, ``UNKNOWN`` or ``SKIPPED``."""

    kind: str = ""

    @property
    def has_truth(self) -> bool:
        """Whether every pool sample's truth is known (recall and filter diagnostics need it)."""
        return False

    @property
    def num_known(self) -> int | None:
        """Known samples in the pool, the denominator of recall (None without ground truth)."""
        return None

    def known_index(self, ids: np.ndarray) -> np.ndarray:
        """The truth for any pool sample (only where ``has_truth``)."""
        raise NotImplementedError(f"the {self.kind} annotator has no ground truth")

    def reveal(self, ids: np.ndarray) -> np.ndarray:
        """The original dataset labels of ``ids`` (only where ``has_truth``)."""
        raise NotImplementedError(f"the {self.kind} annotator has no ground truth")

    @property
    def shows_predictions(self) -> bool:
        """Whether people see the model's guess of each query (the loop then scores the classifier's probabilities)."""
        return False

    def publish(self, requests: list[QueryRequest]) -> None:
        """Make the open requests of every waiting trajectory known to the people who label them."""

    def corrections(self) -> list[Correction]:
        """Labels people changed after their round closed, oldest first (none for a simulated annotator)."""
        return []

    @abstractmethod
    def answers(self, round_index: int, ids: np.ndarray) -> np.ndarray | None:
        """The labels of ``ids`` queried in ``round_index``, or None while some are still missing."""


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
