"""One Ray Data pass over the pool: an actor pool of ``PoolScorer`` computes the score columns.

Actors get checkpoint paths, the (small) pool manifest and the round's small context arrays,
never weights, so an actor that Ray restarts can rebuild itself. Actors reserve a fraction of
a CPU by default: an actor pool that reserves whole CPUs starves Ray Data's read tasks on a
2-CPU machine.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa

from osal_ray.config import ScoringConfig
from osal_ray.data.pool import PoolManifest, model_input, pool_paths, read_table
from osal_ray.scoring.columns import COLUMNS, ColumnInputs, as_tensors, networks_for, stored_columns_for
from osal_ray.strategies.base import PoolScores


class PoolScorer:
    """Callable class for ``map_batches``: pyarrow batch of stored columns -> id + score columns."""

    def __init__(self, manifest: dict, checkpoints: dict[str, str], columns: list[str], context: dict[str, np.ndarray],
                 use_gpu: bool, threads: int) -> None:
        from osal_ray.training.checkpoints import load_network_anywhere

        self.device = actor_device(use_gpu, threads)
        self.manifest = PoolManifest.from_dict(manifest)
        self.columns = [COLUMNS.get(name) for name in columns]
        self.context = as_tensors(context, self.device)
        self.networks = {}
        for network in sorted(networks_for(columns)):
            model, spec = load_network_anywhere(checkpoints[network])
            self.networks[network] = (model.eval().to(self.device), spec.input)
        self.stored = sorted(stored_columns_for(columns))

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import torch

        result = {"id": batch.column("id").to_numpy()}
        with torch.inference_mode():
            inputs = ColumnInputs(
                outputs={
                    name: model.forward_all(model_input(batch, self.manifest, column).to(self.device))
                    for name, (model, column) in self.networks.items()
                },
                stored={
                    name: model_input(batch, self.manifest, name).to(self.device) for name in self.stored
                },
                context=self.context,
            )
            for column in self.columns:
                values = column.compute(inputs)
                result[column.name] = (values if values.dtype == torch.int64 else values.float()).cpu().numpy()
        return result


def actor_pool(scoring: ScoringConfig):
    """The actor pool of a scoring pass: a fixed size, or autoscaling between num_ and max_actors."""
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


def actor_map_options(scoring: ScoringConfig) -> dict:
    """The ``map_batches`` arguments every actor pass shares: pool, CPUs, GPUs and custom resources."""
    use_gpu = scoring.gpus_per_actor > 0
    return {
        "compute": actor_pool(scoring),
        "batch_format": "pyarrow",
        "num_cpus": scoring.cpus_per_actor,
        "num_gpus": scoring.gpus_per_actor if use_gpu else None,
        "resources": dict(scoring.resources_per_actor) or None,
    }


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


def score_pool(
    manifest: PoolManifest,
    checkpoints: Mapping[str, str],
    columns: list[str],
    scoring: ScoringConfig,
    network_inputs: Mapping[str, str] | None = None,
    context: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
) -> PoolScores:
    """Score every pool row; returns ids (sorted) and the requested columns.

    ``timings`` (if given) receives ``score`` (the Ray Data pass, until the last batch arrived)
    and ``gather`` (the driver's concatenation and sort).

    ``network_inputs`` names the stored column each network reads (default: the image);
    ``context`` holds the round's small arrays for columns that declare them.
    """
    if not columns:
        # A strategy that needs no score (random) needs only the ids: no model pass at all.
        return PoolScores(read_table(pool_paths(manifest), []).column("id").to_numpy(), {})

    inputs = network_inputs or {}
    stored = stored_columns_for(columns) | {inputs.get(network, "image") for network in networks_for(columns)}
    row_bytes = 8 + sum(manifest.image_bytes if c == "image" else 4 * manifest.vector_columns[c] for c in stored)
    dataset = (
        read_pool(pool_paths(manifest), manifest.num_pool, scoring)
        .select_columns(["id", *sorted(stored)])
        .repartition(target_num_rows_per_block=rows_per_block(manifest.num_pool, row_bytes, scoring))
    ).map_batches(
        PoolScorer,
        fn_constructor_kwargs={
            "manifest": manifest.to_dict(),
            "checkpoints": dict(checkpoints),
            "columns": list(columns),
            "context": {k: np.asarray(v) for k, v in (context or {}).items()},
            **actor_constructor_kwargs(scoring),
        },
        batch_size=scoring.batch_size,
        **actor_map_options(scoring),
    )
    parts: dict[str, list[np.ndarray]] = {"id": [], **{name: [] for name in columns}}
    started = last = time.perf_counter()
    done = 0
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for name in parts:
            parts[name].append(batch[name])
        done += len(batch["id"])
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            progress(f"scored {done}/{manifest.num_pool} ({done / (last - started):.0f} samples/s)")
    if timings is not None:
        timings["score"] = time.perf_counter() - started
    gathered = time.perf_counter()
    ids = np.concatenate(parts.pop("id"))
    order = np.argsort(ids, kind="stable")
    result = PoolScores(ids[order], {name: np.concatenate(values)[order] for name, values in parts.items()})
    if timings is not None:
        timings["gather"] = time.perf_counter() - gathered
    return result
