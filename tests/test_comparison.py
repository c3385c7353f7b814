"""Paired comparisons (``experiment.comparison``) and the truth-aware references a benchmark runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment.comparison import class_balance, compare, gap_closed, holm, paired_difference, penalty_matrix
from osal_ray.experiment.plan import TRUE_KNOWN_SUFFIX, plan_reference
from osal_ray.experiment.preflight import check_config
from osal_ray.validation import validate_config

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda _: None)


def _seeds(values) -> dict[int, float]:
    return {seed: float(v) for seed, v in enumerate(values)}


def test_paired_difference_is_scipys_paired_t_and_wilcoxon():
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.03, 20)
    b = a - 0.004 + rng.normal(0, 0.006, 20)
    pair = paired_difference("a", "b", _seeds(a), _seeds(b))
    diff = a - b
    assert pair.seeds == 20 and pair.mean == pytest.approx(diff.mean())
    assert pair.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert pair.wilcoxon_p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    low, high = stats.t.interval(0.95, 19, loc=diff.mean(), scale=stats.sem(diff))
    assert (pair.low, pair.high) == (pytest.approx(low), pytest.approx(high))


def test_paired_difference_uses_only_seeds_both_finished():
    pair = paired_difference("a", "b", {0: 0.5, 1: 0.6, 2: math.nan, 3: 0.7}, {0: 0.4, 1: 0.5, 2: 0.5})
    assert pair.seeds == 2 and pair.mean == pytest.approx(0.1)


def test_holm_matches_the_step_down_rule():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 0.02, 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert np.allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02]) and math.isnan(holm(p)[4])


def test_compare_corrects_over_every_pair_and_is_antisymmetric():
    rng = np.random.default_rng(1)
    base = rng.normal(0.8, 0.02, 20)
    values = {"good": _seeds(base + 0.01 + rng.normal(0, 0.002, 20)), "same": _seeds(base + rng.normal(0, 0.002, 20)),
              "also": _seeds(base + rng.normal(0, 0.002, 20))}
    pairs = compare(values)
    assert len(pairs) == 6
    forward, backward = pairs[("good", "same")], pairs[("same", "good")]
    assert forward.mean == pytest.approx(-backward.mean) and forward.t_p_holm == backward.t_p_holm
    smallest = min((pairs[k] for k in [("good", "same"), ("good", "also"), ("same", "also")]), key=lambda p: p.t_p)
    assert smallest.t_p_holm == pytest.approx(3 * smallest.t_p, rel=1e-9)  # the smallest of 3 pairs, times 3
    assert forward.significant() == 1 and backward.significant() == -1
    assert pairs[("same", "also")].significant() == 0


def test_penalty_matrix_counts_significant_wins_per_cell():
    rng = np.random.default_rng(2)
    base = rng.normal(0.8, 0.02, 20)
    cell = compare({"a": _seeds(base + 0.02), "b": _seeds(base + rng.normal(0, 0.001, 20))})
    tie = compare({"a": _seeds(base), "b": _seeds(base)})
    matrix = penalty_matrix([cell, cell, tie], ["a", "b"])
    assert matrix.tolist() == [[0, 2], [0, 0]]


def test_gap_closed_and_class_balance():
    assert gap_closed(0.85, 0.8, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.75, 0.8, 0.9) == pytest.approx(-0.5)
    assert math.isnan(gap_closed(0.85, 0.9, 0.9))
    assert class_balance([5, 5, 5, 5]) == pytest.approx(1.0)
    assert class_balance([10, 0, 0, 0]) == pytest.approx(0.0)
    assert 0 < class_balance([7, 2, 1]) < 1 and math.isnan(class_balance([]))


# ---- truth-aware references ------------------------------------------------------------------------


def test_a_job_cannot_name_a_reference(digits_config, tmp_path):
    with pytest.raises(InputError, match="strategies"):
        validate_config(digits_config(tmp_path / "out", strategies=[f"badge{TRUE_KNOWN_SUFFIX}"]))


def test_a_reference_is_its_strategy_on_the_true_knowns(digits_config, tmp_path):
    config = digits_config(tmp_path / "out", strategies=["badge"])
    plan = plan_reference(config, "badge")
    assert plan.name == "badge@true_known" and plan.candidates == "true_known"
    assert plan.columns == check_config(config)["badge"].columns


def test_a_reference_with_people_labelling_is_refused(digits_config, tmp_path):
    config = digits_config(tmp_path / "out", **{"oracle.kind": "files"})
    plans = {**check_config(config), "random@true_known": plan_reference(config, "random")}
    with pytest.raises(InputError, match="oracle.kind"):
        prepare_experiment(config, plans=plans, **QUIET)


@pytest.mark.ray
def test_a_reference_queries_only_true_knowns_and_resumes_as_itself(ray_session, digits_config, tmp_path):
    out = tmp_path / "out"
    config = digits_config(out, strategies=["random"], **{"al.rounds": 2, "al.budget": 10})
    plans = {**check_config(config), "random@true_known": plan_reference(config, "random")}
    run_experiment(prepare_experiment(config, plans=plans, **QUIET), **QUIET)
    queries = pd.read_parquet(out / "queries.parquet")
    assert queries[queries.strategy == "random@true_known"].known.all()
    assert not queries[queries.strategy == "random"].known.all()  # 80% of the digits pool is unknown
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"random", "random@true_known"}
    # A plain job in that directory keeps the reference's trajectory in its tables without running it.
    longer = digits_config(out, strategies=["random"], **{"al.rounds": 3, "al.budget": 10})
    run_experiment(prepare_experiment(longer, **QUIET), **QUIET)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["random"]["0"]["rounds"] == 3 and summary["runs"]["random@true_known"]["0"]["rounds"] == 2


@pytest.mark.ray
def test_the_powered_benchmark_runs_and_writes_its_tables(ray_session, tmp_path):
    """benchmarks/powered.py end to end on a tiny settings file: the table, pairs, penalty matrix and curves."""
    spec = {
        "base": "jobs/digits.yaml", "regime": "frozen",
        "common": {"features.extractor": "pixels", "features.params": {"components": 16}, "model.classifier": "linear",
                   "model.kwargs": {}, "al.rounds": 2, "train.epochs": 5},
        "budgets": {"low": {"description": "10 per round", "set": {"al.budget": 10}}},
        "settings": {"k2": {"description": "digits, 2 known", "set": {"data.known_classes": 2}}},
        "references": {"ceiling": "margin"},
    }
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "benchmarks" / "powered.py"), "--settings-file", str(settings), "--seeds", "0", "1", "2",
               "--strategies", "random", "margin", "--output-dir", str(tmp_path / "out"), "--results-dir", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(results / "table.csv")
    for column in ("regime", "setting", "budget", "strategy", "seeds", "aubc", "final_recall", "mean_precision", "gap_closed"):
        assert column in table.columns
    assert set(table.strategy) == {"random", "margin", "margin@true_known"} and (table.seeds == 3).all()
    rows = table.set_index("strategy")
    if rows.loc["margin@true_known", "aubc"] > rows.loc["random", "aubc"]:
        assert rows.loc["random", "gap_closed"] == 0 and rows.loc["margin@true_known", "gap_closed"] == 1
    else:  # no gap to close
        assert table.gap_closed.isna().all()
    assert rows.loc["margin@true_known", "mean_precision"] == 1
    assert {"vs_random_mean", "vs_best_t_p_holm", "class_balance", "select_seconds"} <= set(table.columns)
    assert len(pd.read_csv(results / "pairs.csv")) == 2  # one pair, AUBC and recall
    assert (results / "penalty_low.png").stat().st_size > 0 and (results / "curves_low.png").stat().st_size > 0
    assert "## k2, budget low" in (results / "table.md").read_text()
    assert "| k2 | low |" in (results / "headline.md").read_text()
