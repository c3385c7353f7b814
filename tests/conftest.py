"""Shared fixtures: one Ray instance per test session, small configs, score-array builders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from osal_ray.config import ExperimentConfig, config_from_dict
from label_studio_server import label_studio_server  # noqa: F401  (a real Label Studio for the tests that need one)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (4 logical CPUs: see the 2-CPU deadlock note)."""
    import ray

    from osal_ray.cluster import connect_ray
    from osal_ray.config import RayConfig

    os.environ.pop("RAY_ADDRESS", None)
    connect_ray(RayConfig(num_cpus=4, object_store_memory_mb=256))
    yield ray
    ray.shutdown()


def small_digits_config(output_dir: Path, **overrides) -> ExperimentConfig:
    """A digits job that runs a round in seconds."""
    raw = {
        "name": "test-digits",
        "seeds": [0],
        "strategies": ["random", "entropy"],
        "output_dir": str(output_dir),
        "data": {"dataset": "digits", "known_classes": [3, 8], "initial_fraction": 0.05},
        "al": {"rounds": 2, "budget": 10},
        "train": {"epochs": 10, "num_workers": 0},
    }
    return config_with(raw, overrides)


def config_with(raw: dict, overrides: dict) -> ExperimentConfig:
    """``raw`` with ``overrides`` (dotted keys, or a section name with a dict merged into it) applied."""
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(raw)


@pytest.fixture
def digits_config(tmp_path: Path):
    """Factory: ``digits_config(**{"al.rounds": 3})`` -> an ExperimentConfig writing to tmp_path."""

    def make(output_dir: Path | None = None, **overrides) -> ExperimentConfig:
        return small_digits_config(output_dir or tmp_path / "out", **overrides)

    return make


def synthetic_column(name: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible array for score column ``name``; every registered column must have a case."""
    if name == "probs":
        logits = rng.normal(size=(n, k)) * 2
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).astype(np.float32)
    if name == "entropy":
        p = synthetic_column("probs", n, k, rng)
        return -(p * np.log(p)).sum(1)
    if name == "embedding":
        return rng.normal(size=(n, 16)).astype(np.float32)
    if name == "det_pred":
        return rng.integers(0, k + 1, n)
    if name == "det_mav":
        # Two clusters per class: high (known) and low (unknown) maximum activation values.
        return np.where(rng.random(n) < 0.5, rng.normal(6.0, 0.5, n), rng.normal(2.0, 0.5, n)).astype(np.float32)
    if name == "det_known_margin":
        return rng.normal(size=n).astype(np.float32)
    if name == "energy":
        return rng.normal(3.0, 1.0, n).astype(np.float32)
    if name == "bald":
        return rng.gamma(1.0, 0.1, n).astype(np.float32)
    if name == "predicted_loss":
        return rng.gamma(2.0, 0.5, n).astype(np.float32)
    if name == "det_embedding":
        return rng.normal(size=(n, 8)).astype(np.float32)
    if name == "ova_closed_entropy":
        return rng.uniform(0.0, 1.0, n).astype(np.float32)
    if name in ("clip_cos_yes", "clip_cos_no", "clip_cos_visual"):
        return rng.uniform(-0.1, 0.4, (n, k)).astype(np.float32)
    if name in ("ssl_embedding", "features_embedding"):
        z = rng.normal(size=(n, 12))
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    if name == "det_energy":  # low (known) and high (unknown) energy groups
        return np.where(rng.random(n) < 0.5, rng.normal(-8.0, 1.0, n), rng.normal(-2.0, 1.0, n)).astype(np.float32)
    if name == "energy_gap":
        return np.log1p(-synthetic_column("probs", n, k, rng).max(1) + 1e-6).astype(np.float32)
    if name == "open_logits":  # K known then K pseudo-class logits
        return rng.normal(size=(n, 2 * k)).astype(np.float32)
    if name == "det_unknown_prob":
        return rng.uniform(0.0, 1.0, n).astype(np.float32)
    if name == "neg_probs":
        return synthetic_column("probs", n, k, rng)
    raise KeyError(f"no synthetic data for score column {name!r}: add a case to tests/conftest.py")


def labeled_example_pool(directory: Path) -> tuple[Path, dict[str, str]]:
    """A small example image pool (digits) and the label a careful annotator gives each of its images
    (path -> known class name, or ``unknown``), for the tests that label rounds as people do."""
    import csv

    from osal_ray.examples.image_pool import write_example

    summary = write_example(directory, pool_size=120, labeled_per_class=4, test_per_class=8, source="digits")
    known = set(summary["known_classes"])
    with open(directory / "truth.csv", newline="") as handle:
        truth = {row["path"]: (row["label"] if row["label"] in known else "unknown") for row in csv.DictReader(handle)}
    return directory, truth
