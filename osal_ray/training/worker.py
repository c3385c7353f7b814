"""The per-worker training function that Ray Train's TorchTrainer runs.

Workers receive ids, labels and the pool's location, never images or weights through the
object store: each worker reads its labeled rows from the Parquet pool itself.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from osal_ray import storage
from osal_ray.config import TrainConfig
from osal_ray.errors import NON_FINITE_MARKER
from osal_ray.params import Params
from osal_ray.training.batches import epoch_batches
from osal_ray.data.pool import PoolManifest, model_input, pool_paths, read_labeled, read_table
from osal_ray.training.checkpoints import MODEL_FILE, NetworkSpec, load_network, load_network_anywhere, save_network
from osal_ray.training.objectives import OBJECTIVES

TRAIN_STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainJob:
    """One network to train on one round's labeled set; plain data so it pickles cheaply."""

    network: str
    spec: NetworkSpec
    manifest: PoolManifest
    ids: list[int]
    labels: list[int]
    seed: int
    train: TrainConfig
    objective: str = "cross_entropy"
    objective_params: "Params | dict[str, Any]" = field(default_factory=dict)  # typed from the plan; a dict after to_config
    evaluate: bool = False
    init_checkpoint: str | None = None
    local_checkpoint_dir: str | None = None
    log_prefix: str = ""

    def to_config(self) -> dict[str, Any]:
        return {"job": asdict(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrainJob":
        raw = dict(config["job"])
        raw["spec"] = NetworkSpec(**raw["spec"])
        raw["manifest"] = PoolManifest.from_dict(raw["manifest"])
        raw["train"] = TrainConfig(**raw["train"])
        return cls(**raw)


class RayTrainSession:
    """The Ray Train calls the loop makes: rank, world size, resume checkpoint, report."""

    def __init__(self) -> None:
        import ray.train

        self.train = ray.train
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def get_checkpoint(self):
        return self.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        checkpoint = self.train.Checkpoint.from_directory(folder) if folder is not None else None
        self.train.report(metrics, checkpoint=checkpoint)


class InProcessSession:
    """What Ray Train's local mode does, for the one place it refuses to run: inside a Tune trial."""

    rank, world = 0, 1

    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None
        self.folder: str | None = None

    def get_checkpoint(self):
        return None

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        self.metrics, self.folder = metrics, folder


def train_loop_per_worker(config: dict[str, Any], session: RayTrainSession | InProcessSession | None = None) -> None:
    """Train ``TrainJob`` with SGD + StepLR, evaluate on rank 0, report the final checkpoint."""
    import ray.train.torch

    job = TrainJob.from_config(config)
    session = session or RayTrainSession()
    rank, world = session.rank, session.world
    distributed = job.local_checkpoint_dir is None
    device = _device(job.train.use_gpu, distributed)
    torch.manual_seed(job.seed)
    generator = torch.Generator().manual_seed(job.seed + 1)

    x, y = _load_labeled(job)
    objective = OBJECTIVES.get(job.objective, "training objective")(
        job.objective_params, job.spec.num_outputs, y.numpy(), device, generator
    )

    model = job.spec.build()
    if job.init_checkpoint:
        load_network_anywhere(job.init_checkpoint, expected=job.spec, field_name="train.reinit (warm start)", into=model)
    model = ray.train.torch.prepare_model(model) if distributed and world > 1 else model.to(device)
    train = job.train
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step, gamma=train.lr_gamma)

    start_epoch = 0
    resumed = session.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            start_epoch = _restore(Path(folder), job.spec, model, optimizer, scheduler)

    started = time.perf_counter()
    loss_value = float("nan")
    log_every = max(1, train.epochs // 4)
    for epoch in range(start_epoch, train.epochs):
        objective.start_epoch(model, x, y, epoch, train.epochs)
        batches = epoch_batches(len(y), train.batch_size, _epoch_generator(job.seed, epoch), rank, world)
        loss_value = _train_epoch(model, x, y, batches, optimizer, job, objective, device, generator, epoch)
        scheduler.step()
        done = epoch + 1
        if rank == 0 and job.log_prefix and (done % log_every == 0 or done == train.epochs):
            print(f"{job.log_prefix} {job.network}: epoch {done}/{train.epochs} loss {loss_value:.4f}", flush=True)
        if train.checkpoint_every and done % train.checkpoint_every == 0 and done < train.epochs:
            _report(session, job, model, optimizer, scheduler, done, {"epoch": done, "loss": loss_value})

    metrics: dict[str, Any] = {
        "epoch": train.epochs,
        "loss": loss_value,
        "train_samples": len(y),
        "train_seconds": time.perf_counter() - started,
    }
    if job.evaluate and rank == 0:
        metrics["accuracy"] = evaluate_accuracy(getattr(model, "module", model), job.manifest, device, job.spec.input)
    _report(session, job, model, optimizer, scheduler, train.epochs, metrics)


def _device(use_gpu: bool, distributed: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        if distributed:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda")
    return torch.device("cpu")


def _load_labeled(job: TrainJob) -> tuple[torch.Tensor, torch.Tensor]:
    table, labels = read_labeled(pool_paths(job.manifest), job.spec.input, job.ids, job.labels)
    return model_input(table, job.manifest, job.spec.input), torch.from_numpy(labels)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle: the same on every worker, and the same after a resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 0xBA7C]).generate_state(1)[0]))


def _train_epoch(model, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor], optimizer, job: TrainJob, objective,
                 device, generator, epoch: int) -> float:
    model.train()
    total, count = 0.0, 0
    for index in batches:
        xb, yb = x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
        if job.train.augment and xb.dim() == 4:
            xb = augment_batch(xb, generator)
        loss = objective.loss(model, xb, yb, index)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"{NON_FINITE_MARKER}: loss {loss.item()} in epoch {epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(yb)
        count += len(yb)
    return total / max(count, 1)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per sample (CIFAR recipe)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flips = torch.rand(n, generator=generator).lt(0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip_idx = [i for i, f in enumerate(flips) if f]
    if flip_idx:
        out[flip_idx] = out[flip_idx].flip(-1)
    return out


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, manifest: PoolManifest, device: torch.device, input_column: str = "image",
                      batch_size: int = 1024) -> float:
    """K-way accuracy on the known-class test set (labels mapped to 0..K-1)."""
    table = read_table([str(Path(manifest.directory) / manifest.test_file)], [input_column, "label"])
    mapping = {c: i for i, c in enumerate(manifest.known_classes)}
    targets = np.array([mapping[int(label)] for label in table.column("label").to_numpy()], dtype=np.int64)
    model.eval()
    correct = 0
    for start in range(0, len(targets), batch_size):
        xb = model_input(table.slice(start, batch_size), manifest, input_column).to(device)
        predictions = model(xb).argmax(1).cpu().numpy()
        correct += int((predictions == targets[start : start + batch_size]).sum())
    return correct / max(len(targets), 1)


def _report(session, job: TrainJob, model, optimizer, scheduler, epoch: int, metrics: dict[str, Any]) -> None:
    if session.rank != 0:
        session.report(metrics, None)
        return
    if job.local_checkpoint_dir is not None:
        folder = Path(job.local_checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _write_checkpoint(folder, job, model, optimizer, scheduler, epoch)
        session.report(metrics, str(folder))
        return
    with tempfile.TemporaryDirectory() as tmp:
        _write_checkpoint(Path(tmp), job, model, optimizer, scheduler, epoch)
        session.report(metrics, tmp)


def _write_checkpoint(folder: Path, job: TrainJob, model, optimizer, scheduler, epoch: int) -> None:
    save_network(model, job.spec, folder / MODEL_FILE)
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    storage.write_file(folder / TRAIN_STATE_FILE, lambda tmp: torch.save(state, tmp))


def _restore(folder: Path, spec: NetworkSpec, model, optimizer, scheduler) -> int:
    """Continue an interrupted training from its last reported checkpoint; returns the next epoch."""
    load_network(folder / MODEL_FILE, expected=spec, into=getattr(model, "module", model))
    state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"])
