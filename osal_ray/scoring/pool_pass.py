"""One Ray Data pass over the pool: an actor pool of ``PoolScorer`` computes the score columns.

Actors get checkpoint paths and the (small) pool manifest, never weights, so an actor that
Ray restarts can rebuild itself. Actors reserve a fraction of a CPU by default: an actor pool
that reserves whole CPUs starves Ray Data's read tasks on a 2-CPU machine.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from osal_ray.config import ScoringConfig
from osal_ray.data.pool import PoolManifest, decode_images, pool_paths, to_model_input
from osal_ray.scoring.columns import COLUMNS, NetworkOutput
from osal_ray.strategies.base import PoolScores


class PoolScorer:
    """Callable class for ``map_batches``: pyarrow batch of (id, image) -> id + score columns."""

    def __init__(self, manifest: dict, checkpoints: dict[str, str], columns: list[str], use_gpu: bool, threads: int) -> None:
        import torch

        from osal_ray.training.checkpoints import load_network

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.manifest = PoolManifest.from_dict(manifest)
        self.columns = [COLUMNS.get(name) for name in columns]
        self.networks = {}
        for network in sorted({column.network for column in self.columns}):
            model, _ = _load_checkpoint(checkpoints[network], load_network)
            self.networks[network] = model.eval().to(self.device)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import torch

        images = decode_images(batch.column("image"), self.manifest)
        x = to_model_input(images, self.manifest).to(self.device)
        result = {"id": batch.column("id").to_numpy()}
        with torch.inference_mode():
            outputs = {name: NetworkOutput(*model.forward_all(x)) for name, model in self.networks.items()}
            for column in self.columns:
                values = column.compute(outputs[column.network])
                result[column.name] = (values if values.dtype == torch.int64 else values.float()).cpu().numpy()
        return result


def _load_checkpoint(path: str, load_network: Callable):
    """Load a network from a local path or any URI Ray Train's Checkpoint understands."""
    if "://" not in path:
        return load_network(path)
    from ray.train import Checkpoint

    with Checkpoint(path).as_directory() as folder:
        return load_network(folder)


def score_pool(
    manifest: PoolManifest,
    checkpoints: dict[str, str],
    columns: list[str],
    scoring: ScoringConfig,
    progress: Callable[[str], None] | None = None,
) -> PoolScores:
    """Score every pool row with the given networks; returns ids (sorted) and the columns."""
    import ray.data

    if not columns:
        # A strategy that needs no score (random) needs only the ids: no model pass at all.
        ids = pads.dataset(pool_paths(manifest), format="parquet").to_table(columns=["id"]).column("id").to_numpy()
        return PoolScores(np.sort(ids), {})

    compute = (
        ray.data.ActorPoolStrategy(size=scoring.num_actors)
        if scoring.max_actors is None
        else ray.data.ActorPoolStrategy(min_size=scoring.num_actors, max_size=scoring.max_actors)
    )
    use_gpu = scoring.gpus_per_actor > 0
    dataset = ray.data.read_parquet(pool_paths(manifest)).select_columns(["id", "image"]).map_batches(
        PoolScorer,
        fn_constructor_kwargs={
            "manifest": manifest.to_dict(),
            "checkpoints": checkpoints,
            "columns": list(columns),
            "use_gpu": use_gpu,
            "threads": max(1, math.ceil(scoring.cpus_per_actor)),
        },
        compute=compute,
        batch_size=scoring.batch_size,
        batch_format="pyarrow",
        num_cpus=scoring.cpus_per_actor,
        num_gpus=scoring.gpus_per_actor if use_gpu else None,
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
    ids = np.concatenate(parts.pop("id"))
    order = np.argsort(ids, kind="stable")
    return PoolScores(ids[order], {name: np.concatenate(values)[order] for name, values in parts.items()})
