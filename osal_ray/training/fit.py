"""Driver side of training: one TorchTrainer per network per round."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from osal_ray import storage
from osal_ray.training.worker import InProcessSession, TrainJob, train_loop_per_worker


@dataclass(frozen=True)
class FitResult:
    """Where the trained network's checkpoint lives and what the workers reported."""

    checkpoint_path: str
    metrics: dict[str, Any]


def fit_network(job: TrainJob, storage_path: str | Path, name: str, staging: Path | None = None) -> FitResult:
    """Train ``job`` with Ray Train (in-process when ``job.train.num_workers`` is 0).

    Runs are named ``name`` under ``storage_path`` (a directory or a URI such as s3://...).
    With workers, Ray Train resumes a run of the same name from its last checkpoint, which is
    how an interrupted round picks up mid-training. In-process training (Ray Train's local mode)
    does not resume: an interrupted network is trained again from its seed, to the same result.
    It writes its checkpoint to ``storage_path`` directly, or to ``staging`` and then uploads it
    when storage is a URI.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = job.train
    local = train.num_workers == 0
    storage_path = storage.ray_storage_path(storage_path)
    if local:
        target = storage.join(storage_path, name, "checkpoint")
        folder = (staging or Path(".")) / name / "checkpoint" if storage.is_uri(storage_path) else Path(target)
        job = replace(job, local_checkpoint_dir=str(folder))
        if _in_tune_trial():
            return _fit_in_tune_trial(job, storage_path, target)
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
            # A lost worker restarts the group from the last reported checkpoint (see train.checkpoint_every).
            failure_config=FailureConfig(max_failures=train.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None or result.metrics is None:
        raise RuntimeError(f"training run {name} finished without reporting a checkpoint")
    if local:
        return _local_result(job, storage_path, target, dict(result.metrics))
    checkpoint = result.checkpoint.path
    if storage.is_uri(storage_path):
        # Ray's Checkpoint.path drops the scheme (s3://bucket/x -> bucket/x): rebuild the URI.
        checkpoint = storage.join(storage_path, name, PurePosixPath(checkpoint).name)
    return FitResult(checkpoint_path=checkpoint, metrics=dict(result.metrics))


def _local_result(job: TrainJob, storage_path: str, target: str, metrics: dict[str, Any]) -> FitResult:
    """The in-process checkpoint, uploaded when the storage is a URI."""
    if storage.is_uri(storage_path):
        storage.upload_directory(job.local_checkpoint_dir, target)
    return FitResult(checkpoint_path=target, metrics=metrics)


def _in_tune_trial() -> bool:
    """Whether this process runs a Tune trial: Ray Train refuses its local mode there (ray-project/ray#49454).

    Ray's public context answers: ``tune.get_context().get_trial_id()`` is None outside a trial (it
    warns that it is meant for trials; that is the question we ask, so the warning is silenced).
    """
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


def _fit_in_tune_trial(job: TrainJob, storage_path: str, target: str) -> FitResult:
    """``num_workers: 0`` inside a sweep trial: the same loop in the trial process, as local mode would run it.

    ``num_workers >= 1`` inside a trial uses TorchTrainer workers (Ray's Train-inside-Tune pattern).
    """
    session = InProcessSession()
    train_loop_per_worker(job.to_config(), session=session)
    if session.metrics is None:
        raise RuntimeError("the training loop reported nothing")
    return _local_result(job, storage_path, target, dict(session.metrics))
