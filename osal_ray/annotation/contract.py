"""Who labels the queried samples: the label codes and the annotator contract every backend implements.

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

import numpy as np

from osal_ray.config import SKIP

__all__ = ["SKIP", "SKIPPED", "UNKNOWN", "Annotator", "Correction", "QueryRequest"]

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

    def close(self, round_index: int) -> None:
        """Every trajectory has imported the round's answers: mark it done (people's rounds stay on record)."""

    @abstractmethod
    def answers(self, round_index: int, ids: np.ndarray) -> np.ndarray | None:
        """The labels of ``ids`` queried in ``round_index``, or None while some are still missing."""
