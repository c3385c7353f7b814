"""Checks of meaning on a loaded configuration, all before any data is read or Ray starts.

Each failure is an InputError that names the dotted config key and what is allowed.
"""

from __future__ import annotations

import re

from osal_ray.annotation import annotator_backend, oracle_kinds
from osal_ray.config import SKIP, ExperimentConfig
from osal_ray.errors import InputError, require, shown
from osal_ray.training.checkpoints import KEEP_CHECKPOINTS
from osal_ray.training.objective_params import WEIGHT_REDUCTIONS

PROTOCOLS = ("mismatch", "ood_ratio")
CLASS_WEIGHTINGS = ("auto", "none", "inverse_frequency")
MAX_SEED = 2**32 - 1  # numpy's SeedSequence entropy words and torch.manual_seed take seeds of 32 bits here
MAX_LR = 1e6  # beyond this SGD steps overflow float32 (inf weights, not a clean divergence); below, a diverging run stops with TrainingDiverged


def validate_config(config: ExperimentConfig) -> None:
    """Raise InputError for the first impossible or unknown value in ``config``."""
    from osal_ray.data import DATASETS
    from osal_ray.data.image_pool import UNSAFE_NAME_CHARACTERS
    from osal_ray.models import MODELS
    from osal_ray.strategies import STRATEGIES

    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", config.name):
        raise InputError("name", f"{shown(config.name)} must be letters, digits, '_', '-' or '.'")
    require(bool(config.seeds), "seeds", "give at least one seed")
    require(len(set(config.seeds)) == len(config.seeds), "seeds", f"repeated seeds in {shown(config.seeds)}")
    outside = [s for s in config.seeds if not 0 <= s <= MAX_SEED]
    require(not outside, "seeds", f"{shown(outside[:1])}: seeds must be in 0 .. {MAX_SEED} (numpy seeds)")
    require(bool(config.strategies), "strategies", f"give at least one of: {', '.join(STRATEGIES.names())}")
    require(len(set(config.strategies)) == len(config.strategies), "strategies", f"repeated strategies in {shown(config.strategies)}")
    for name in config.strategies:
        STRATEGIES.get(name, "strategies")

    data = config.data
    DATASETS.get(data.dataset, "data.dataset")
    require(data.protocol in PROTOCOLS, "data.protocol", f"{shown(data.protocol)} is not one of {', '.join(PROTOCOLS)}")
    if data.mismatch_ratio is not None:
        require(0.0 < data.mismatch_ratio < 1.0, "data.mismatch_ratio", f"{data.mismatch_ratio} must be in (0, 1)")
    if isinstance(data.known_classes, int):
        require(data.known_classes >= 2, "data.known_classes", f"{data.known_classes}: need at least 2 known classes")
    elif isinstance(data.known_classes, list):
        require(len(data.known_classes) >= 2, "data.known_classes", "list at least 2 known classes")
    require(0.0 < data.initial_fraction <= 1.0, "data.initial_fraction", f"{data.initial_fraction} must be in (0, 1]")
    require(data.initial_size >= 1, "data.initial_size", "must be at least 1")
    require(0.0 <= data.ood_ratio < 1.0, "data.ood_ratio", f"{data.ood_ratio} must be in [0, 1)")
    require(0.0 < data.test_fraction < 1.0, "data.test_fraction", f"{data.test_fraction} must be in (0, 1)")
    require(0.0 < data.train_fraction <= 1.0, "data.train_fraction", f"{data.train_fraction} must be in (0, 1]")
    require(data.image_size >= 8, "data.image_size", "must be at least 8 pixels")
    require(data.pool_files >= 1, "data.pool_files", "must be at least 1")
    require(data.num_samples >= 100, "data.num_samples", "must be at least 100 (synthetic dataset)")
    require(data.num_classes >= 3, "data.num_classes", "must be at least 3 (synthetic dataset)")

    require(bool(data.unknown_label.strip()) and data.unknown_label.casefold() != SKIP, "data.unknown_label",
             f"{shown(data.unknown_label)}: give a folder/label name other than {SKIP!r} (reserved for unusable images)")
    require(data.unknown_label == data.unknown_label.strip() and data.unknown_label.isprintable()
             and not UNSAFE_NAME_CHARACTERS & set(data.unknown_label), "data.unknown_label",
             f"{shown(data.unknown_label)}: no leading or trailing spaces, commas, quotes or control characters (it is a label in CSV files)")
    require(data.channels in (None, 1, 3), "data.channels", f"{data.channels}: 1 (grayscale), 3 (colour) or null (decided from the images)")
    kinds = oracle_kinds()
    require(config.oracle.kind in kinds, "oracle.kind", f"{shown(config.oracle.kind)} is not one of {', '.join(kinds)}")
    annotator_backend(config).validate(config)

    require(config.al.rounds >= 1, "al.rounds", "must be at least 1")
    require(config.al.budget >= 1, "al.budget", "must be at least 1")

    MODELS.get(config.model.classifier, "model.classifier")
    if config.model.detector is not None:
        MODELS.get(config.model.detector, "model.detector")

    t = config.train
    require(t.epochs >= 1, "train.epochs", "must be at least 1")
    require(t.batch_size >= 1, "train.batch_size", "must be at least 1")
    require(0 < t.lr <= MAX_LR, "train.lr", f"{shown(t.lr)}: must be in (0, {MAX_LR:g}] (larger steps overflow training)")
    require(0.0 <= t.momentum < 1.0, "train.momentum", "must be in [0, 1)")
    require(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    require(t.lr_step >= 1, "train.lr_step", "must be at least 1")
    require(0.0 < t.lr_gamma <= 1.0, "train.lr_gamma", "must be in (0, 1]")
    require(t.num_workers >= 0, "train.num_workers", "must be >= 0 (0 trains in the driver process)")
    require(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be positive")
    require(t.max_failures >= 0, "train.max_failures", "must be >= 0 (0: a failed training worker fails the round)")
    require(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: only the final checkpoint)")
    require(t.keep_checkpoints in KEEP_CHECKPOINTS, "train.keep_checkpoints",
             f"{shown(t.keep_checkpoints)} is not one of {', '.join(KEEP_CHECKPOINTS)} (last: only the latest checkpoint of "
             "each network, what a resume needs; all: every round's)")

    require(config.detector.temperature > 0, "detector.temperature", "must be positive")
    require(
        config.detector.class_weights in CLASS_WEIGHTINGS,
        "detector.class_weights",
        f"{shown(config.detector.class_weights)} is not one of {', '.join(CLASS_WEIGHTINGS)}",
    )
    require(
        config.detector.class_weight_reduction in WEIGHT_REDUCTIONS,
        "detector.class_weight_reduction",
        f"{shown(config.detector.class_weight_reduction)} is not one of {', '.join(WEIGHT_REDUCTIONS)}",
    )

    c = config.clip
    require(c.batch_size >= 1, "clip.batch_size", "must be at least 1")
    if c.templates is not None:
        require(bool(c.templates) and all("{}" in t for t in c.templates), "clip.templates", "each template needs a {} for the class name")

    s = config.scoring
    require(s.num_actors >= 1, "scoring.num_actors", "must be at least 1")
    if s.max_actors is not None:
        require(s.max_actors >= s.num_actors, "scoring.max_actors", f"must be >= scoring.num_actors ({s.num_actors})")
    require(s.cpus_per_actor > 0, "scoring.cpus_per_actor", "must be positive (fractions such as 0.5 are allowed)")
    require(s.gpus_per_actor >= 0, "scoring.gpus_per_actor", "must be >= 0")
    require(s.cpus_per_read > 0, "scoring.cpus_per_read", "must be positive (a fraction keeps reads from starving actors)")
    require(s.batch_size >= 1, "scoring.batch_size", "must be at least 1")
    require(all(v > 0 for v in s.resources_per_actor.values()), "scoring.resources_per_actor", "amounts must be positive")
    require(s.mode in ("auto", "resident", "streaming"), "scoring.mode", f"{shown(s.mode)} is not one of auto, resident, streaming")
    require(s.parquet_reader in ("auto", "v1", "v2"), "scoring.parquet_reader", f"{shown(s.parquet_reader)} is not one of auto, v1, v2")

    e = config.execution
    if e.max_concurrent_trajectories is not None:
        require(e.max_concurrent_trajectories >= 1, "execution.max_concurrent_trajectories",
                 "must be at least 1 (1: one trajectory after the other in the driver; null: as many as the cluster holds)")
    require(e.cpus_per_trajectory >= 0, "execution.cpus_per_trajectory",
             "must be >= 0 (a fraction such as 0.1: the trajectory's work reserves its own CPUs)")
    if e.torch_threads is not None:
        require(e.torch_threads >= 1, "execution.torch_threads", "must be at least 1 (null: torch's default, every core)")

    if config.ray.num_cpus is not None:
        require(config.ray.num_cpus >= 1, "ray.num_cpus", "must be at least 1")
    require(0 <= config.sweep.seed <= MAX_SEED, "sweep.seed", f"{shown(config.sweep.seed)}: must be in 0 .. {MAX_SEED}")
    require(config.ray.object_store_memory_mb >= 78, "ray.object_store_memory_mb", "Ray needs at least 78 MB")


