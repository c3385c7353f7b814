"""The output contract: rounds.parquet, queries.parquet, summary.json, config.yaml, curves.png.

Later tools read these files; their columns are documented in the README.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from osal_ray import storage
from osal_ray.config import SummaryMetric, allowed
from osal_ray.experiment import metrics
from osal_ray.experiment.state import RunState, atomic_write_text

ROUND_COLUMNS = [
    "strategy", "seed", "round", "n_labeled_known", "n_invalid", "budget_spent", "n_queried",
    "accuracy", "precision", "recall",
]
QUERY_COLUMNS = ["strategy", "seed", "round", "id", "key", "path", "score", "label", "known", "skipped"]
# Per strategy and seed in summary.json (and their mean and std over seeds).
SUMMARY_METRICS = allowed(SummaryMetric)


def rounds_frame(states: Iterable[RunState]) -> pd.DataFrame:
    """One row per strategy x seed x round; extra diagnostics and phase timings as more columns."""
    rows = []
    for state in states:
        for record in state.rounds:
            row: dict[str, Any] = {"strategy": state.strategy, "seed": state.seed}
            row.update({key: getattr(record, key) for key in ROUND_COLUMNS[2:]})
            row.update(record.extra)
            row.update({f"seconds_{phase}": value for phase, value in record.seconds.items()})
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=ROUND_COLUMNS)
    ordered = ROUND_COLUMNS + sorted(c for c in frame.columns if c not in ROUND_COLUMNS)
    return frame[ordered].sort_values(["strategy", "seed", "round"], kind="stable").reset_index(drop=True)


def queries_frame(states: Iterable[RunState], catalog: Mapping[int, tuple[str, str | None]] | None = None) -> pd.DataFrame:
    """Every labeled query: round, strategy, seed, id, its key and path (``catalog``: id -> (key, path);
    without it the key is the id), the strategy's score, the label, whether known or skipped."""
    catalog = catalog or {}
    rows = [
        {"strategy": s.strategy, "seed": s.seed, "round": q.round, "id": q.id, "key": catalog.get(q.id, (str(q.id), None))[0],
         "path": catalog.get(q.id, (None, None))[1], "score": q.score, "label": q.label, "known": q.known, "skipped": q.skipped}
        for s in states
        for q in s.queries
    ]
    frame = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    return frame.astype({"seed": "int64", "round": "int64", "id": "int64", "key": "object", "path": "object", "score": "float64",
                         "label": "int64", "known": "bool", "skipped": "bool"})


def summary(states: Iterable[RunState]) -> dict[str, Any]:
    """Per strategy and seed: AUBC, last accuracy, final recall, mean precision; and their mean/std."""
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for state in states:
        if not state.rounds:
            continue
        budgets = np.array([r.budget_spent for r in state.rounds])
        accuracy = np.array([r.accuracy for r in state.rounds])
        precisions = [r.precision for r in state.rounds if not math.isnan(r.precision)]
        runs.setdefault(state.strategy, {})[str(state.seed)] = {
            "aubc": metrics.aubc(budgets, accuracy),
            "last_accuracy": float(accuracy[-1]),
            "final_recall": float(state.rounds[-1].recall),
            "mean_precision": float(np.mean(precisions)) if precisions else math.nan,
            "rounds": int(state.rounds[-1].round),
            "budget_spent": int(budgets[-1]),
        }
    result: dict[str, Any] = {"runs": runs, "mean": {}, "std": {}}
    for strategy, seeds in runs.items():
        values = {k: np.array([seeds[s][k] for s in seeds], dtype=np.float64) for k in SUMMARY_METRICS}
        result["mean"][strategy] = {k: _finite(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in values.items()}
        result["std"][strategy] = {k: _finite(np.nanstd(v)) if np.isfinite(v).any() else None for k, v in values.items()}
    return result


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def write_tables(output_dir: Path, states: list[RunState], manifests: Iterable[Any] = (),
                 failed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Rewrite rounds.parquet, queries.parquet and summary.json from the run states (``manifests``:
    the pools, whose catalog gives each query's key and path; ``failed``: ``strategy/seed`` -> the
    error of each trajectory that failed, summary.json's ``failed``)."""
    from osal_ray.data.pool import read_catalog

    queried = np.unique(np.asarray([q.id for s in states for q in s.queries], dtype=np.int64))
    catalog: dict[int, tuple[str, str | None]] = {}
    for manifest in {m.directory: m for m in manifests}.values():
        if len(queried):
            catalog.update(read_catalog(manifest, queried))
    _atomic_parquet(rounds_frame(states), output_dir / "rounds.parquet")
    _atomic_parquet(queries_frame(states, catalog), output_dir / "queries.parquet")
    result = summary(states)
    if failed:
        result["failed"] = dict(failed)
    atomic_write_text(output_dir / "summary.json", json.dumps(_json_safe(result), indent=2))
    return result


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(path, buffer.getvalue())


def plot_curves(frame: pd.DataFrame, path: Path, title: str = "") -> None:
    """Accuracy, precision and recall per round: one line per strategy (mean over seeds, band = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes, ["accuracy", "precision", "recall"]):
        for strategy, group in frame.groupby("strategy", sort=True):
            stats = group.groupby("budget_spent")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
            if stats.empty:
                continue
            x = stats.index.to_numpy()
            ax.plot(x, stats["mean"], marker="o", markersize=3, label=strategy)
            ax.fill_between(x, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0), alpha=0.15)
        ax.set_xlabel("labels bought (budget spent)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())
