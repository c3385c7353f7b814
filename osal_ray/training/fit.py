"""Driver side of training: one TorchTrainer per network per round."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from osal_ray.config import TrainConfig
from osal_ray.training.worker import TrainJob, train_loop_per_worker


@dataclass(frozen=True)
class FitResult:
    """Where the trained network's checkpoint lives and what the workers reported."""

    checkpoint_path: str
    metrics: dict[str, Any]


def fit_network(job: TrainJob, train: TrainConfig, storage_path: Path, name: str) -> FitResult:
    """Train ``job`` with Ray Train (in-process when ``train.num_workers`` is 0).

    Runs are named ``name`` under ``storage_path``; Ray Train resumes a run of the same
    name from its last checkpoint, which is how an interrupted round picks up again.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    local = train.num_workers == 0
    storage_path = storage_path.resolve()
    if local:
        job = replace(job, local_checkpoint_dir=str(storage_path / name / "checkpoint"))
        scaling = ScalingConfig(num_workers=0)
    else:
        scaling = ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})},
        )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.to_config(),
        scaling_config=scaling,
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None or result.metrics is None:
        raise RuntimeError(f"training run {name} finished without reporting a checkpoint")
    return FitResult(checkpoint_path=result.checkpoint.path, metrics=dict(result.metrics))
