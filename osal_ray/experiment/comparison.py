"""Paired comparisons of strategies over seeds: intervals, tests, Holm's correction, the penalty matrix.

Every strategy of a benchmark cell (a setting and a budget) ran on the same seeds, and a seed fixes
the split, the initial set, the initialisations and the data order, so the per-seed differences
between two strategies are paired observations. ``compare`` turns one metric's per-seed values into:

- for every pair (a, b): the mean difference a - b with its 95% t-interval, the paired t-test's and
  the Wilcoxon signed-rank test's two-sided p-values, and both Holm-corrected over every pair of the
  cell (one family per cell);
- ``significant``: a beats b when the Holm-corrected t-test rejects at ``alpha`` and the mean
  difference is positive (Lüth et al., 2023, count these wins in their penalty matrix).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

ALPHA = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """``a`` minus ``b`` over their shared seeds."""

    a: str
    b: str
    seeds: int
    mean: float
    low: float
    high: float
    t_p: float
    wilcoxon_p: float
    t_p_holm: float = math.nan
    wilcoxon_p_holm: float = math.nan

    def significant(self, alpha: float = ALPHA) -> int:
        """+1 where ``a`` is significantly better, -1 where worse, 0 otherwise (Holm-corrected t-test)."""
        if not math.isfinite(self.t_p_holm) or self.t_p_holm >= alpha:
            return 0
        return 1 if self.mean > 0 else -1


def paired_difference(a: str, b: str, values_a: Mapping[int, float], values_b: Mapping[int, float]) -> PairedDifference:
    """The paired difference of two strategies' per-seed values (seeds where both are finite)."""
    from scipy import stats

    seeds = sorted(s for s in set(values_a) & set(values_b)
                   if math.isfinite(values_a[s]) and math.isfinite(values_b[s]))
    diff = np.array([values_a[s] - values_b[s] for s in seeds], dtype=float)
    mean, low, high = mean_interval(diff)
    if len(diff) < 2:
        return PairedDifference(a, b, len(diff), mean, low, high, math.nan, math.nan)
    # The t statistic is undefined without spread: a constant shift is certain, no difference is none.
    t_p = float(stats.ttest_1samp(diff, 0.0).pvalue) if diff.std(ddof=1) > 0 else (1.0 if mean == 0.0 else 0.0)
    w_p = float(stats.wilcoxon(diff).pvalue) if np.any(diff) else 1.0
    return PairedDifference(a, b, len(diff), mean, low, high, t_p, w_p)


def mean_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the finite paired differences (NaN bounds with fewer than 2, all NaN with none)."""
    from scipy import stats

    values = np.asarray(differences, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count towards the family)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def compare(values: Mapping[str, Mapping[int, float]]) -> dict[tuple[str, str], PairedDifference]:
    """Every ordered pair of strategies, Holm-corrected over the unordered pairs of this family."""
    names = list(values)
    pairs = [paired_difference(a, b, values[a], values[b]) for a, b in itertools.combinations(names, 2)]
    t_holm, w_holm = holm([p.t_p for p in pairs]), holm([p.wilcoxon_p for p in pairs])
    result: dict[tuple[str, str], PairedDifference] = {}
    for pair, t, w in zip(pairs, t_holm, w_holm):
        forward = PairedDifference(pair.a, pair.b, pair.seeds, pair.mean, pair.low, pair.high, pair.t_p,
                                   pair.wilcoxon_p, float(t), float(w))
        result[(pair.a, pair.b)] = forward
        result[(pair.b, pair.a)] = PairedDifference(pair.b, pair.a, pair.seeds, -pair.mean, -pair.high, -pair.low,
                                                    pair.t_p, pair.wilcoxon_p, float(t), float(w))
    return result


def penalty_matrix(cells: Sequence[Mapping[tuple[str, str], PairedDifference]], names: Sequence[str],
                   alpha: float = ALPHA) -> np.ndarray:
    """``matrix[i, j]``: in how many cells strategy ``names[i]`` is significantly better than ``names[j]``."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=int)
    for cell in cells:
        for (a, b), pair in cell.items():
            if a in index and b in index and pair.significant(alpha) > 0:
                matrix[index[a], index[b]] += 1
    return matrix


def gap_closed(value: float, floor: float, ceiling: float) -> float:
    """The share of the floor-to-ceiling gap that ``value`` closes (NaN when the ceiling is not above the floor)."""
    gap = ceiling - floor
    if not (math.isfinite(gap) and math.isfinite(value)) or gap <= 0:
        return math.nan
    return (value - floor) / gap


def class_balance(counts: Sequence[int]) -> float:
    """Normalised entropy of per-class counts: 1 for equal counts, 0 when one class has all (NaN for none)."""
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    if total <= 0 or len(c) < 2:
        return math.nan
    p = c[c > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(len(c)))
