"""Resident scorers: actors that stay alive across rounds, each holding its shard of the decoded pool.

The streaming pass (``osal_ray.scoring.pool_pass``) starts an actor pool, reads and cuts the pool
and decodes every batch again in every round: a fixed cost of seconds per pass that dominates a
small pool. Resident scorers pay that once per run: each of ``scoring.num_actors`` actors reads its
contiguous shard of the pool's Parquet files when it starts and keeps the stored columns as tensors
on its device (the uint8 images on the GPU, where it has one). Each round only checkpoint paths and
the round's small context arrays travel; the actor loads the new weights and scores its shard.

Node loss: the actors restart on another node (``max_restarts=-1``) and rebuild their shard from
the pool files, and the interrupted call is retried (``max_task_retries=-1``). Shards and batches
depend only on the pool and ``scoring.num_actors``/``batch_size``, never on placement, so the
scores, and the queries, are the same.

Which mode a pass runs in is ``scoring.mode``; :func:`use_resident` decides ``auto``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from osal_ray.config import ScoringConfig, TrainConfig
from osal_ray.data.pool import PoolManifest, decode_images, decode_vectors, pool_paths, to_model_input
from osal_ray.data.ray_pass import actor_device
from osal_ray.scoring.batch import RoundNetworks, gather_scores, score_batch
from osal_ray.scoring.columns import COLUMNS, as_tensors
from osal_ray.strategies.base import PoolScores

Segment = tuple[str, int, int]  # (Parquet file, first row, end row) of a shard

# A resident pool may take at most this share of the cluster's memory (Ray's "memory" resource):
# above it, auto scoring streams the pool instead of holding it.
MAX_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class ModeDecision:
    """Whether passes run on resident scorers, and why (logged once per run)."""

    resident: bool
    reason: str


def use_resident(scoring: ScoringConfig, train: TrainConfig, pool_bytes: int, cluster: Mapping[str, float],
                 concurrent: int = 1) -> ModeDecision:
    """``scoring.mode``: ``resident``/``streaming`` as configured; ``auto`` holds the pool resident when
    the cluster holds the scorers and a training run side by side (the scorers keep their CPUs and
    GPUs between passes; ``concurrent`` trajectories each have both) and the pool takes at most
    ``MAX_MEMORY_SHARE`` of the cluster's memory."""
    if scoring.mode != "auto":
        return ModeDecision(scoring.mode == "resident", f"scoring.mode is {scoring.mode}")
    actors = scoring.num_actors
    need = {
        "CPU": concurrent * (actors * scoring.cpus_per_actor + train.num_workers * train.cpus_per_worker),
        "GPU": concurrent * (actors * scoring.gpus_per_actor + (train.num_workers if train.use_gpu else 0)),
        **{k: concurrent * actors * v for k, v in scoring.resources_per_actor.items()},
    }
    short = {k: v for k, v in need.items() if v > 0 and v > cluster.get(k, 0.0) + 1e-9}
    if short:
        have = ", ".join(f"{k} {v:g} of {cluster.get(k, 0.0):g}" for k, v in short.items())
        return ModeDecision(False, f"streaming: resident scorers and training need {have} at once")
    memory = cluster.get("memory", 0.0)
    if memory and pool_bytes > MAX_MEMORY_SHARE * memory:
        return ModeDecision(False, f"streaming: the pool's {pool_bytes / 2**30:.1f} GiB exceed "
                                   f"{MAX_MEMORY_SHARE:.0%} of the cluster's {memory / 2**30:.1f} GiB memory")
    return ModeDecision(True, f"resident: {actors} scorer(s) hold the pool ({pool_bytes / 2**20:.0f} MiB) across rounds")


def plan_shards(paths: list[str], num_actors: int) -> list[list[Segment]]:
    """Cut the pool's rows (in file order) into ``num_actors`` contiguous, near-equal shards."""
    import pyarrow.parquet as pq

    counts = [pq.ParquetFile(path).metadata.num_rows for path in paths]
    total = sum(counts)
    bounds = [round(i * total / num_actors) for i in range(num_actors + 1)]
    shards: list[list[Segment]] = []
    for start, stop in zip(bounds, bounds[1:]):
        segments, offset = [], 0
        for path, count in zip(paths, counts):
            first, end = max(start, offset), min(stop, offset + count)
            if first < end:
                segments.append((path, first - offset, end - offset))
            offset += count
        shards.append(segments)
    return shards


def read_segments(segments: list[Segment], columns: list[str]):
    """The rows of ``segments`` (only ``columns``), reading only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for path, first, end in segments:
        file = pq.ParquetFile(path)
        groups, offset, group_start = [], 0, None
        for index in range(file.metadata.num_row_groups):
            rows = file.metadata.row_group(index).num_rows
            if offset < end and offset + rows > first:
                groups.append(index)
                group_start = offset if group_start is None else group_start
            offset += rows
        table = file.read_row_groups(groups, columns=columns)
        parts.append(table.slice(first - group_start, end - first))
    return pa.concat_tables(parts).combine_chunks()


class ShardScorer:
    """A Ray actor: one shard of the pool, held decoded on its device, scored again every round."""

    def __init__(self, manifest: dict, segments: list[Segment], stored: list[str], use_gpu: bool, threads: int) -> None:
        import torch

        self.device = actor_device(use_gpu, threads)
        self.manifest = PoolManifest.from_dict(manifest)
        table = read_segments(segments, ["id", *stored])
        self.ids = table.column("id").to_numpy()
        self.stored: dict[str, torch.Tensor] = {}
        for name in stored:
            if name == "image":
                values = decode_images(table.column(name), self.manifest)
            else:
                values = decode_vectors(table.column(name), self.manifest.vector_columns[name])
            self.stored[name] = torch.from_numpy(values.copy()).to(self.device)
        self.networks = RoundNetworks(self.device)

    def num_rows(self) -> int:
        return len(self.ids)

    def score(self, checkpoints: dict[str, str], columns: list[str], context: dict[str, np.ndarray],
              batch_size: int) -> dict[str, np.ndarray]:
        """Score every row of the shard: ``id`` and the ``columns``, in shard order."""
        networks = self.networks.load(checkpoints, columns)
        computed = [COLUMNS.get(name) for name in columns]
        tensors = as_tensors(context, self.device)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        for start in range(0, len(self.ids), batch_size):
            rows = slice(start, start + batch_size)

            def model_input_of(column: str, rows: slice = rows) -> "torch.Tensor":  # noqa: F821
                values = self.stored[column][rows]
                return to_model_input(values, self.manifest) if column == "image" else values

            for name, values in score_batch(computed, networks, model_input_of, tensors).items():
                parts[name].append(values)
        return {"id": self.ids, **{name: _concatenate(values) for name, values in parts.items()}}


def _concatenate(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(values) if values else np.zeros(0, dtype=np.float32)


class ResidentScorers:
    """The driver's handle on one set of resident scorers: a pool, its stored columns, its actors."""

    def __init__(self, manifest: PoolManifest, stored: frozenset[str], scoring: ScoringConfig) -> None:
        import ray

        from osal_ray.data.ray_pass import actor_constructor_kwargs, actor_resources

        self.manifest, self.stored, self.scoring = manifest, stored, scoring
        self.job_id = ray.get_runtime_context().get_job_id()
        actor = ray.remote(ShardScorer).options(
            **actor_resources(scoring),
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy="DEFAULT",  # never captured by a Tune trial's placement group
        )
        shards = plan_shards(pool_paths(manifest), scoring.num_actors)
        self.actors = [actor.remote(manifest.to_dict(), segments, sorted(stored), **actor_constructor_kwargs(scoring))
                       for segments in shards if segments]

    def score(self, checkpoints: Mapping[str, str], columns: list[str], context: Mapping[str, np.ndarray],
              progress: Callable[[str], None] | None = None) -> PoolScores:
        """Every pool row's ``columns`` (ids sorted), scored by the shards in parallel."""
        import ray

        arguments = (dict(checkpoints), list(columns), {k: np.asarray(v) for k, v in context.items()}, self.scoring.batch_size)
        pending = {actor.score.remote(*arguments): index for index, actor in enumerate(self.actors)}
        results: dict[int, dict[str, np.ndarray]] = {}
        started = last = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=10)
            for ref in ready:
                results[pending.pop(ref)] = ray.get(ref)
            if progress and pending and time.perf_counter() - last > 10:
                last = time.perf_counter()
                progress(f"scored {len(results)}/{len(self.actors)} shards ({last - started:.0f} s)")
        return gather_scores([results[index] for index in range(len(self.actors))], columns)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


# One driver (or trajectory task) process keeps the resident scorers of the pool it scores; a
# different pool, a different Ray session or the end of a run releases them.
_RESIDENT: dict[tuple, ResidentScorers] = {}


def resident_scorers(manifest: PoolManifest, stored: frozenset[str], scoring: ScoringConfig) -> ResidentScorers:
    """The resident scorers for this pool, stored columns and scoring settings, started on first use."""
    import ray

    job_id = ray.get_runtime_context().get_job_id()
    key = (manifest.directory, manifest.fingerprint, stored, repr(scoring))
    for other in [k for k, v in _RESIDENT.items() if v.job_id != job_id or k[:2] != key[:2]]:
        scorers = _RESIDENT.pop(other)
        if scorers.job_id == job_id:
            scorers.close()
    if key not in _RESIDENT:
        _RESIDENT[key] = ResidentScorers(manifest, stored, scoring)
    return _RESIDENT[key]


def release_resident_scorers() -> None:
    """Stop every resident scorer this process started (the end of a run or of a trajectory task)."""
    import ray

    while _RESIDENT:
        _, scorers = _RESIDENT.popitem()
        if ray.is_initialized() and scorers.job_id == ray.get_runtime_context().get_job_id():
            scorers.close()

