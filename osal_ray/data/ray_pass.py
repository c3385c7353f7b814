"""What every Ray Data actor pass over the Parquet pool shares: the reader, block size and actor options.

The scoring pass (``osal_ray.scoring.pool_pass``) and the CLIP embedding pass
(``osal_ray.data.clip_store``) both read the pool with :func:`read_pool`, cut it with
:func:`rows_per_block` and run an actor class under :func:`actor_map_options`. Actors reserve
a fraction of a CPU by default: an actor pool that reserves whole CPUs starves Ray Data's read
tasks on a 2-CPU machine.
"""

from __future__ import annotations

import math

from osal_ray.config import ScoringConfig


def actor_pool(scoring: ScoringConfig):
    """The actor pool of a pass: a fixed size, or autoscaling between num_ and max_actors."""
    import ray.data

    if scoring.max_actors is None:
        return ray.data.ActorPoolStrategy(size=scoring.num_actors)
    return ray.data.ActorPoolStrategy(min_size=scoring.num_actors, max_size=scoring.max_actors)


def actor_device(use_gpu: bool, threads: int) -> "torch.device":  # noqa: F821
    """Inside an actor: limit torch's threads to the CPUs it reserves; the GPU when asked and present."""
    import torch

    torch.set_num_threads(max(1, threads))
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def actor_constructor_kwargs(scoring: ScoringConfig) -> dict:
    """The constructor arguments every actor class of a pass takes: ``use_gpu`` and ``threads``."""
    return {"use_gpu": scoring.gpus_per_actor > 0, "threads": max(1, math.ceil(scoring.cpus_per_actor))}


def actor_resources(scoring: ScoringConfig) -> dict:
    """One scoring actor's CPUs, GPUs and custom resources, as Ray's options take them."""
    return {
        "num_cpus": scoring.cpus_per_actor,
        "num_gpus": scoring.gpus_per_actor if scoring.gpus_per_actor > 0 else None,
        "resources": dict(scoring.resources_per_actor) or None,
    }


def actor_map_options(scoring: ScoringConfig) -> dict:
    """The ``map_batches`` arguments every actor pass shares: pool, CPUs, GPUs and custom resources."""
    return {"compute": actor_pool(scoring), "batch_format": "pyarrow", **actor_resources(scoring)}


# Measured with benchmarks/scaling.py --reader v1|v2 on 2 cores (benchmarks/results/scaling_v*.md):
# Ray 2.60's V2 Parquet reader has a fixed cost per pass (it lists the files with a thread pool in
# a task: the default job's 20 passes take 86 s with it, 61 s with V1) and is slower up to 300k
# rows, but reads large pools in parallel and wins from 1M rows on. "auto" switches in between.
V2_READER_FROM_ROWS = 500_000


def use_v2_reader(scoring: ScoringConfig, num_rows: int) -> bool:
    """Which Ray Data Parquet reader a pass over ``num_rows`` rows uses."""
    if scoring.parquet_reader != "auto":
        return scoring.parquet_reader == "v2"
    return num_rows >= V2_READER_FROM_ROWS


def read_pool(paths: list[str], num_rows: int, scoring: ScoringConfig):
    """``ray.data.read_parquet`` with the reader ``scoring.parquet_reader`` picks for this size."""
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = use_v2_reader(scoring, num_rows)
    return ray.data.read_parquet(paths, num_cpus=scoring.cpus_per_read)


def rows_per_block(num_rows: int, row_bytes: int, scoring: ScoringConfig, max_block_bytes: int = 64 << 20) -> int:
    """Block size for the pass: at least 4 blocks per actor, so every actor gets work (a Parquet
    read may hand over a whole small pool as one block), and blocks of at most ~64 MB."""
    actors = scoring.max_actors or scoring.num_actors
    by_count = math.ceil(num_rows / (4 * actors))
    by_bytes = max(1, max_block_bytes // max(row_bytes, 1))
    return max(scoring.batch_size, min(by_count, by_bytes))
