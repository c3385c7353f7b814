"""The per-round table and the final summary table printed on stdout."""

from __future__ import annotations

import math
from typing import Any

from osal_ray.experiment.outputs import SUMMARY_METRICS
from osal_ray.experiment.state import RoundRecord

_HEADER = f"{'strategy':<18} {'seed':>4} {'round':>5} {'known':>6} {'invalid':>7} {'budget':>6} {'accuracy':>8} {'precision':>9} {'recall':>6} {'seconds':>7}"


def round_header() -> str:
    return _HEADER + "\n" + "-" * len(_HEADER)


def round_row(strategy: str, seed: int, record: RoundRecord) -> str:
    """One finished round as a table row."""
    seconds = sum(record.seconds.values())
    return (
        f"{strategy:<18} {seed:>4} {record.round:>5} {record.n_labeled_known:>6} {record.n_invalid:>7} "
        f"{record.budget_spent:>6} {_fmt(record.accuracy, 8)} {_fmt(record.precision, 9)} {_fmt(record.recall, 6)} {seconds:>7.1f}"
    )


def summary_table(result: dict[str, Any]) -> str:
    """Mean (and std over seeds) of AUBC, last accuracy, final recall and mean precision per strategy."""
    keys = SUMMARY_METRICS
    header = f"{'strategy':<18} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys)
    lines = [header, "-" * len(header)]
    for strategy in sorted(result["mean"]):
        mean, std = result["mean"][strategy], result["std"][strategy]
        cells = " ".join(f"{_pm(mean[k], std[k]):>17}" for k in keys)
        lines.append(f"{strategy:<18} {len(result['runs'][strategy]):>5} {cells}")
    return "\n".join(lines)


def _fmt(value: float, width: int) -> str:
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.3f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std or 0.0:.3f}"
