"""The model's guess of each queried sample, shown to the people who label it (pre-annotations).

The guess is the classifier's most likely known class, or unknown where the strategy's own known
probability (``Selection.diagnostics["known_probability"]``, e.g. JSOSAL's mixtures) is below one
half. Its score is how sure the guess is: the probability of unknown, or of the class (the
classifier's probability times the known probability where the strategy has one).
"""

from __future__ import annotations

import numpy as np

from osal_ray.annotation.contract import UNKNOWN
from osal_ray.strategies import PoolScores, Selection

PROBABILITY_COLUMN = "probs"


def query_guesses(pool: PoolScores, selection: Selection) -> tuple[list[int], list[float]]:
    """(guess, score) of every selected sample, in query order: 0..K-1 or ``UNKNOWN``, and a score in [0, 1]."""
    chosen = np.asarray(selection.indices, dtype=np.int64)
    probs = np.asarray(pool[PROBABILITY_COLUMN], dtype=np.float64)[chosen]
    guess = probs.argmax(axis=1).astype(np.int64)
    score = probs.max(axis=1)
    known = selection.diagnostics.get("known_probability")
    if known is not None:
        p_known = np.clip(np.asarray(known, dtype=np.float64)[chosen], 0.0, 1.0)
        unknown = p_known < 0.5
        score = np.where(unknown, 1.0 - p_known, p_known * score)
        guess = np.where(unknown, UNKNOWN, guess)
    return guess.tolist(), np.round(np.nan_to_num(score, nan=0.0), 6).tolist()
