"""Checks of meaning on a loaded configuration, all before any data is read or Ray starts.

Each failure is an InputError that names the dotted config key and what is allowed.
"""

from __future__ import annotations

import re

from osal_ray.config import ExperimentConfig
from osal_ray.errors import InputError, shown
from osal_ray.training.checkpoints import KEEP_CHECKPOINTS
from osal_ray.training.objective_params import WEIGHT_REDUCTIONS

PROTOCOLS = ("mismatch", "ood_ratio")
ORACLE_KINDS = ("auto", "simulated", "files", "label_studio")
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
    _require(bool(config.seeds), "seeds", "give at least one seed")
    _require(len(set(config.seeds)) == len(config.seeds), "seeds", f"repeated seeds in {shown(config.seeds)}")
    outside = [s for s in config.seeds if not 0 <= s <= MAX_SEED]
    _require(not outside, "seeds", f"{shown(outside[:1])}: seeds must be in 0 .. {MAX_SEED} (numpy seeds)")
    _require(bool(config.strategies), "strategies", f"give at least one of: {', '.join(STRATEGIES.names())}")
    _require(len(set(config.strategies)) == len(config.strategies), "strategies", f"repeated strategies in {shown(config.strategies)}")
    for name in config.strategies:
        STRATEGIES.get(name, "strategies")

    data = config.data
    DATASETS.get(data.dataset, "data.dataset")
    _require(data.protocol in PROTOCOLS, "data.protocol", f"{shown(data.protocol)} is not one of {', '.join(PROTOCOLS)}")
    if data.mismatch_ratio is not None:
        _require(0.0 < data.mismatch_ratio < 1.0, "data.mismatch_ratio", f"{data.mismatch_ratio} must be in (0, 1)")
    if isinstance(data.known_classes, int):
        _require(data.known_classes >= 2, "data.known_classes", f"{data.known_classes}: need at least 2 known classes")
    elif isinstance(data.known_classes, list):
        _require(len(data.known_classes) >= 2, "data.known_classes", "list at least 2 known classes")
    _require(0.0 < data.initial_fraction <= 1.0, "data.initial_fraction", f"{data.initial_fraction} must be in (0, 1]")
    _require(data.initial_size >= 1, "data.initial_size", "must be at least 1")
    _require(0.0 <= data.ood_ratio < 1.0, "data.ood_ratio", f"{data.ood_ratio} must be in [0, 1)")
    _require(0.0 < data.test_fraction < 1.0, "data.test_fraction", f"{data.test_fraction} must be in (0, 1)")
    _require(0.0 < data.train_fraction <= 1.0, "data.train_fraction", f"{data.train_fraction} must be in (0, 1]")
    _require(data.image_size >= 8, "data.image_size", "must be at least 8 pixels")
    _require(data.pool_files >= 1, "data.pool_files", "must be at least 1")
    _require(data.num_samples >= 100, "data.num_samples", "must be at least 100 (synthetic dataset)")
    _require(data.num_classes >= 3, "data.num_classes", "must be at least 3 (synthetic dataset)")

    _require(bool(data.unknown_label.strip()) and data.unknown_label.casefold() != "skip", "data.unknown_label",
             f"{shown(data.unknown_label)}: give a folder/label name other than 'skip' (reserved for unusable images)")
    _require(data.unknown_label == data.unknown_label.strip() and data.unknown_label.isprintable()
             and not UNSAFE_NAME_CHARACTERS & set(data.unknown_label), "data.unknown_label",
             f"{shown(data.unknown_label)}: no leading or trailing spaces, commas, quotes or control characters (it is a label in CSV files)")
    _require(data.channels in (None, 1, 3), "data.channels", f"{data.channels}: 1 (grayscale), 3 (colour) or null (decided from the images)")
    _require(config.oracle.kind in ORACLE_KINDS, "oracle.kind", f"{shown(config.oracle.kind)} is not one of {', '.join(ORACLE_KINDS)}")
    if config.oracle.kind == "label_studio":
        _validate_label_studio(config)

    _require(config.al.rounds >= 1, "al.rounds", "must be at least 1")
    _require(config.al.budget >= 1, "al.budget", "must be at least 1")

    MODELS.get(config.model.classifier, "model.classifier")
    if config.model.detector is not None:
        MODELS.get(config.model.detector, "model.detector")

    t = config.train
    _require(t.epochs >= 1, "train.epochs", "must be at least 1")
    _require(t.batch_size >= 1, "train.batch_size", "must be at least 1")
    _require(0 < t.lr <= MAX_LR, "train.lr", f"{shown(t.lr)}: must be in (0, {MAX_LR:g}] (larger steps overflow training)")
    _require(0.0 <= t.momentum < 1.0, "train.momentum", "must be in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _require(t.lr_step >= 1, "train.lr_step", "must be at least 1")
    _require(0.0 < t.lr_gamma <= 1.0, "train.lr_gamma", "must be in (0, 1]")
    _require(t.num_workers >= 0, "train.num_workers", "must be >= 0 (0 trains in the driver process)")
    _require(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be positive")
    _require(t.max_failures >= 0, "train.max_failures", "must be >= 0 (0: a failed training worker fails the round)")
    _require(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: only the final checkpoint)")
    _require(t.keep_checkpoints in KEEP_CHECKPOINTS, "train.keep_checkpoints",
             f"{shown(t.keep_checkpoints)} is not one of {', '.join(KEEP_CHECKPOINTS)} (last: only the latest checkpoint of "
             "each network, what a resume needs; all: every round's)")

    _require(config.detector.temperature > 0, "detector.temperature", "must be positive")
    _require(
        config.detector.class_weights in CLASS_WEIGHTINGS,
        "detector.class_weights",
        f"{shown(config.detector.class_weights)} is not one of {', '.join(CLASS_WEIGHTINGS)}",
    )
    _require(
        config.detector.class_weight_reduction in WEIGHT_REDUCTIONS,
        "detector.class_weight_reduction",
        f"{shown(config.detector.class_weight_reduction)} is not one of {', '.join(WEIGHT_REDUCTIONS)}",
    )

    c = config.clip
    _require(c.batch_size >= 1, "clip.batch_size", "must be at least 1")
    if c.templates is not None:
        _require(bool(c.templates) and all("{}" in t for t in c.templates), "clip.templates", "each template needs a {} for the class name")

    s = config.scoring
    _require(s.num_actors >= 1, "scoring.num_actors", "must be at least 1")
    if s.max_actors is not None:
        _require(s.max_actors >= s.num_actors, "scoring.max_actors", f"must be >= scoring.num_actors ({s.num_actors})")
    _require(s.cpus_per_actor > 0, "scoring.cpus_per_actor", "must be positive (fractions such as 0.5 are allowed)")
    _require(s.gpus_per_actor >= 0, "scoring.gpus_per_actor", "must be >= 0")
    _require(s.cpus_per_read > 0, "scoring.cpus_per_read", "must be positive (a fraction keeps reads from starving actors)")
    _require(s.batch_size >= 1, "scoring.batch_size", "must be at least 1")
    _require(all(v > 0 for v in s.resources_per_actor.values()), "scoring.resources_per_actor", "amounts must be positive")
    _require(s.mode in ("auto", "resident", "streaming"), "scoring.mode", f"{shown(s.mode)} is not one of auto, resident, streaming")
    _require(s.parquet_reader in ("auto", "v1", "v2"), "scoring.parquet_reader", f"{shown(s.parquet_reader)} is not one of auto, v1, v2")

    e = config.execution
    if e.max_concurrent_trajectories is not None:
        _require(e.max_concurrent_trajectories >= 1, "execution.max_concurrent_trajectories",
                 "must be at least 1 (1: one trajectory after the other in the driver; null: as many as the cluster holds)")
    _require(e.cpus_per_trajectory >= 0, "execution.cpus_per_trajectory",
             "must be >= 0 (a fraction such as 0.1: the trajectory's work reserves its own CPUs)")
    if e.torch_threads is not None:
        _require(e.torch_threads >= 1, "execution.torch_threads", "must be at least 1 (null: torch's default, every core)")

    if config.ray.num_cpus is not None:
        _require(config.ray.num_cpus >= 1, "ray.num_cpus", "must be at least 1")
    _require(0 <= config.sweep.seed <= MAX_SEED, "sweep.seed", f"{shown(config.sweep.seed)}: must be in 0 .. {MAX_SEED}")
    _require(config.ray.object_store_memory_mb >= 78, "ray.object_store_memory_mb", "Ray needs at least 78 MB")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise InputError(field, message)


def web_origin(url: str) -> str | None:
    """The origin (``scheme://host[:port]``) of an http(s) URL, as browsers send it; None for anything else."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or "*" in url:
        return None
    default = {"http": 80, "https": 443}[parsed.scheme]
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{parsed.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _validate_label_studio(config: ExperimentConfig) -> None:
    """The Label Studio settings an ``oracle.kind: label_studio`` run needs (the server is asked in preflight)."""
    import os
    from urllib.parse import urlparse

    studio = config.label_studio
    for key in ("url", "service_url"):
        value = getattr(studio, key)
        if value is None:
            continue
        parsed = urlparse(value)
        _require(parsed.scheme in ("http", "https") and bool(parsed.netloc), f"label_studio.{key}",
                 f"{shown(value)} is not an http(s) URL")
    _require(studio.url is not None, "label_studio.url", "give the Label Studio server's URL, e.g. http://127.0.0.1:8080")
    _require(bool(studio.token_env.strip()), "label_studio.token_env", "name the environment variable that holds the API token")
    _require(bool(os.environ.get(studio.token_env, "").strip()), "label_studio.token_env",
             f"the environment variable {studio.token_env} is not set: export the Label Studio API token there")
    if studio.project is not None:
        _require(3 <= len(studio.project.strip()) <= 50, "label_studio.project",
                 f"{shown(studio.project)}: Label Studio project titles have 3 to 50 characters")
    for origin in studio.cors_origins or []:
        _require(isinstance(origin, str) and web_origin(origin) == origin, "label_studio.cors_origins",
                 f"{shown(origin)} is not a web origin (scheme://host[:port], no path, no '*')")
    _require(studio.wait_seconds >= 0, "label_studio.wait_seconds", "must be >= 0")
    _require(studio.poll_seconds > 0, "label_studio.poll_seconds", "must be positive")
