"""The papers' metrics on worked examples, and the summary built from run states."""

from __future__ import annotations

import math

import numpy as np
import pytest

from osal_ray.experiment import metrics
from osal_ray.experiment.outputs import summary
from osal_ray.experiment.state import RoundRecord, RunState


def test_precision_and_recall():
    assert metrics.precision(np.array([True, False, True, True])) == 0.75
    assert math.isnan(metrics.precision(np.array([], dtype=bool)))
    assert metrics.recall(30, 120) == 0.25


def test_aubc_worked_example():
    # Budgets 0, 10, 20 with accuracies 0.5, 0.7, 0.8: area = 10*(0.6) + 10*(0.75) = 13.5, over 20.
    assert metrics.aubc(np.array([0, 10, 20]), np.array([0.5, 0.7, 0.8])) == pytest.approx(0.675)
    assert metrics.aubc(np.array([0]), np.array([0.9])) == pytest.approx(0.9)
    assert metrics.aubc(np.array([0, 10]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_auroc_worked_example():
    assert metrics.auroc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    # Positives 0.9, 0.2; negatives 0.3, 0.1: 3 of the 4 (positive, negative) pairs are ordered right.
    assert metrics.auroc(np.array([0.9, 0.3, 0.2, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert math.isnan(metrics.auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_binary_scores_worked_example():
    # predicted: T T F F T ; truth: T F F T T -> TP 2, FP 1, FN 1, TN 1
    scores = metrics.binary_scores(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool))
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    nothing = metrics.binary_scores(np.zeros(3, bool), np.array([1, 0, 1], bool))
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0.0 and math.isnan(nothing["f1"])


def _state(seed: int, accuracies: list[float], precisions: list[float]) -> RunState:
    state = RunState("entropy", seed, {})
    for r, (acc, prec) in enumerate(zip(accuracies, precisions)):
        state.rounds.append(RoundRecord(r, 10 + r, 0, 10 * r, 10 if r else 0, acc, prec, 0.1 * (r + 1)))
    return state


def test_summary_per_seed_and_mean():
    result = summary([_state(0, [0.5, 0.7, 0.8], [math.nan, 0.5, 1.0]), _state(1, [0.5, 0.5, 0.5], [math.nan, 0.0, 0.0])])
    run0 = result["runs"]["entropy"]["0"]
    assert run0["aubc"] == pytest.approx(0.675)
    assert run0["last_accuracy"] == 0.8
    assert run0["final_recall"] == pytest.approx(0.3)
    assert run0["mean_precision"] == pytest.approx(0.75)
    assert result["mean"]["entropy"]["aubc"] == pytest.approx((0.675 + 0.5) / 2)
    assert result["std"]["entropy"]["last_accuracy"] == pytest.approx(0.15)
