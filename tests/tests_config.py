"""Configs shared by the multi-node scenarios and the single-node references they are compared with."""

from __future__ import annotations

from pathlib import Path

from osal_ray.config import ExperimentConfig, config_from_dict


def _base(out: Path, **sections) -> dict:
    raw = {
        "name": "multinode",
        "seeds": [0],
        "strategies": ["entropy"],
        "output_dir": str(out),
        "data": {"dataset": "digits", "known_classes": [3, 8], "initial_fraction": 0.05},
        "al": {"rounds": 1, "budget": 10},
        "train": {"epochs": 10, "num_workers": 0},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def spread_config(out: Path) -> ExperimentConfig:
    """Two scoring actors that each need a node's only ``scorer`` slot: one per worker node."""
    return config_from_dict(_base(out, scoring={"num_actors": 2, "resources_per_actor": {"scorer": 1}, "batch_size": 128}))


def node_loss_config(out: Path, mode: str = "auto") -> ExperimentConfig:
    """A scoring pass long enough (80k synthetic 16x16 images, a CNN) to lose a node in the middle of it,
    on resident scorers or a streaming pass (``scoring.mode``)."""
    return config_from_dict(_base(
        out,
        data={"dataset": "synthetic", "num_samples": 80_000, "num_classes": 10, "image_size": 16, "known_classes": 3,
              "initial_fraction": 0.005, "test_fraction": 0.02},
        model={"classifier": "cnn", "kwargs": {"width": 16, "embedding": 32}},
        train={"epochs": 5, "num_workers": 0},
        scoring={"mode": mode, "num_actors": 2, "resources_per_actor": {"scorer": 1}, "batch_size": 256},
    ))


def sweep_config(out: Path) -> ExperimentConfig:
    """Two concurrent trials that each need a node's only ``trial`` slot."""
    return config_from_dict(_base(out, strategies=["jsosal"], sweep={
        "space": {"detector.temperature": {"grid": [0.5, 1.0]}},
        "max_concurrent_trials": 2,
        "trial_resources": {"CPU": 0.25, "trial": 1},
    }))
