"""Scoring the pool: one Ray Data pass (an actor pool of ``PoolScorer``), or the resident scorers.

Actors get checkpoint paths, the (small) pool manifest and the round's small context arrays,
never weights, so an actor that Ray restarts can rebuild itself. The reader, block size and
actor options every pass shares live in ``osal_ray.data.ray_pass``.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa

from osal_ray.config import ScoringConfig
from osal_ray.data.pool import PoolManifest, model_input, pool_paths, read_table
from osal_ray.data.ray_pass import actor_constructor_kwargs, actor_device, actor_map_options, read_pool, rows_per_block
from osal_ray.scoring.batch import RoundNetworks, gather_scores, score_batch
from osal_ray.scoring.columns import COLUMNS, as_tensors, networks_for, stored_columns_for
from osal_ray.strategies.base import PoolScores


class PoolScorer:
    """Callable class for ``map_batches``: pyarrow batch of stored columns -> id + score columns."""

    def __init__(self, manifest: dict, checkpoints: dict[str, str], columns: list[str], context: dict[str, np.ndarray],
                 use_gpu: bool, threads: int) -> None:
        self.device = actor_device(use_gpu, threads)
        self.manifest = PoolManifest.from_dict(manifest)
        self.columns = [COLUMNS.get(name) for name in columns]
        self.context = as_tensors(context, self.device)
        self.networks = RoundNetworks(self.device).load(checkpoints, list(columns))

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        def model_input_of(column: str) -> "torch.Tensor":  # noqa: F821
            return model_input(batch, self.manifest, column).to(self.device)

        return {"id": batch.column("id").to_numpy(), **score_batch(self.columns, self.networks, model_input_of, self.context)}


def score_pool(
    manifest: PoolManifest,
    checkpoints: Mapping[str, str],
    columns: list[str],
    scoring: ScoringConfig,
    network_inputs: Mapping[str, str] | None = None,
    context: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
    resident: bool = False,
) -> PoolScores:
    """Score every pool row; returns ids (sorted) and the requested columns.

    ``scoring.mode`` inline: in this process (``osal_ray.scoring.inline``); else ``resident``: on this
    process's resident scorers for the pool (``osal_ray.scoring.resident``, started on first use and
    kept across rounds), else one streaming Ray Data pass.

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
    if scoring.mode == "inline":
        from osal_ray.scoring.inline import score_inline

        started = time.perf_counter()
        result = score_inline(manifest, frozenset(stored), checkpoints, list(columns), context or {}, scoring.batch_size)
        if timings is not None:
            timings["score"], timings["gather"] = time.perf_counter() - started, 0.0
        return result
    if resident:
        from osal_ray.scoring.resident import resident_scorers

        started = time.perf_counter()
        scorers = resident_scorers(manifest, frozenset(stored), scoring)
        result = scorers.score(checkpoints, list(columns), context or {}, progress)
        if timings is not None:
            timings["score"], timings["gather"] = time.perf_counter() - started, 0.0
        return result
    row_bytes = manifest.row_bytes(stored)
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
    parts: list[dict[str, np.ndarray]] = []
    started = last = time.perf_counter()
    done = 0
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        parts.append({name: batch[name] for name in ("id", *columns)})
        done += len(batch["id"])
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            progress(f"scored {done}/{manifest.num_pool} ({done / (last - started):.0f} samples/s)")
    if timings is not None:
        timings["score"] = time.perf_counter() - started
    gathered = time.perf_counter()
    result = gather_scores(parts, columns)
    if timings is not None:
        timings["gather"] = time.perf_counter() - gathered
    return result
