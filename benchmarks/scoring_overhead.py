"""Scoring per round: resident scorers and the streaming Ray Data pass against a plain PyTorch loop.

Issue 14 §2. For each workload, side by side in one run on the same machine, the same pool,
the same networks (a new checkpoint every round, as in a real run) and the same batch size:

- ``plain xT``: one process holds the pool's images in memory (read once, untimed) and each round
  loads the new weights and computes the same columns batch by batch with T torch threads;
- ``streaming xN``: ``score_pool`` with ``scoring.mode: streaming`` (one Ray Data pass per round,
  N actors of one thread each);
- ``resident xN``: ``score_pool`` with ``scoring.mode: resident`` (N actors of one thread that keep
  their shard across rounds); its first round, which starts the actors and reads the shards, is
  reported apart from the steady rounds.

Equal compute: N actors of one thread are compared with the plain loop at N threads. Workloads:
the Fashion-MNIST CNN (classifier and K+1 detector, the columns JSOSAL reads) on the 12k and 60k
pools (needs ``apt-get install dataset-fashion-mnist``), and a CIFAR ResNet-18 classifier on
32x32x3 synthetic images. Writes ``benchmarks/results/scoring_overhead.{json,md}``.

    python benchmarks/scoring_overhead.py [--workloads fmnist_12k fmnist_60k resnet18_synthetic] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from osal_ray.cluster import connect_ray
from osal_ray.config import DataConfig, RayConfig, ScoringConfig
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.datasets import ImageSplit, SourceDataset
from osal_ray.data.pool import PoolManifest, read_rows, pool_paths, to_model_input
from osal_ray.scoring import score_pool
from osal_ray.scoring.batch import RoundNetworks, score_batch
from osal_ray.scoring.columns import COLUMNS
from osal_ray.scoring.resident import release_resident_scorers
from osal_ray.training import NetworkSpec, save_network

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    networks: dict[str, tuple[str, dict]]  # network name -> (model, kwargs)
    columns: tuple[str, ...]
    batch_size: int


WORKLOADS = {
    "fmnist_12k": Workload("fmnist_12k", "Fashion-MNIST 12k pool (train_fraction 0.2), CNN classifier + K+1 detector",
                           {"classifier": ("cnn", {"width": 16, "embedding": 64}), "detector": ("cnn", {"width": 16, "embedding": 64})},
                           ("entropy", "det_pred", "det_mav", "det_known_margin"), 1024),
    "fmnist_60k": Workload("fmnist_60k", "Fashion-MNIST 60k pool (the whole training set), CNN classifier + K+1 detector",
                           {"classifier": ("cnn", {"width": 16, "embedding": 64}), "detector": ("cnn", {"width": 16, "embedding": 64})},
                           ("entropy", "det_pred", "det_mav", "det_known_margin"), 1024),
    "resnet18_synthetic": Workload("resnet18_synthetic", "CIFAR ResNet-18 classifier on 32x32x3 synthetic images",
                                   {"classifier": ("resnet18_cifar", {})}, ("entropy",), 256),
}


def make_pool(workload: str, root: Path, synthetic_size: int) -> PoolManifest:
    if workload.startswith("fmnist"):
        fraction = 0.2 if workload == "fmnist_12k" else 1.0
        config = DataConfig(dataset="fashion_mnist", known_classes=4, initial_fraction=0.005, train_fraction=fraction)
        source = load_dataset(config)
    else:
        config = DataConfig(dataset="synthetic", num_samples=synthetic_size, num_classes=10, image_size=32,
                            known_classes=4, initial_fraction=0.01, test_fraction=0.05)
        gray = load_dataset(config)
        rgb = lambda split: ImageSplit(np.repeat(split.images, 3, axis=3), split.labels)  # noqa: E731
        source = SourceDataset(gray.name, rgb(gray.train), rgb(gray.test), gray.class_names, gray.pixel_max)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    return materialize_pool(source, split, root / workload, num_files=2)


def make_checkpoints(workload: Workload, manifest: PoolManifest, root: Path, rounds: int) -> list[dict[str, str]]:
    """One checkpoint per network per round (different weights; untrained weights cost the same to run)."""
    channels, side = manifest.input_size("image")
    per_round = []
    for index in range(rounds):
        torch.manual_seed(index)
        paths = {}
        for name, (model, kwargs) in workload.networks.items():
            outputs = manifest.num_known + (1 if name == "detector" else 0)
            spec = NetworkSpec(model, outputs, channels, side, kwargs)
            folder = root / f"round{index}" / name
            folder.mkdir(parents=True, exist_ok=True)
            save_network(spec.build(), spec, folder / "model.pt")
            paths[name] = str(folder)
        per_round.append(paths)
    return per_round


def plain_round(images: torch.Tensor, manifest: PoolManifest, checkpoints: dict[str, str], columns: list[str],
                batch_size: int) -> float:
    """One round of the plain loop: load this round's weights, score every batch of the in-memory pool."""
    started = time.perf_counter()
    networks = RoundNetworks(torch.device("cpu")).load(checkpoints, columns)
    computed = [COLUMNS.get(name) for name in columns]
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        score_batch(computed, networks, lambda column, batch=batch: to_model_input(batch, manifest), {})
    return time.perf_counter() - started


def run_workload(workload: Workload, manifest: PoolManifest, per_round: list[dict[str, str]], actors: list[int]) -> list[dict]:
    columns = list(workload.columns)
    inputs = {name: "image" for name in workload.networks}
    _, images, _ = read_rows(pool_paths(manifest), manifest)
    images = torch.from_numpy(images.copy())
    rows = []
    for count in actors:
        torch.set_num_threads(count)
        plain = [plain_round(images, manifest, checkpoints, columns, workload.batch_size) for checkpoints in per_round]
        rows.append(_row(workload, manifest, f"plain x{count}", count, plain, None))
        for mode in ("streaming", "resident"):
            scoring = ScoringConfig(mode=mode, num_actors=count, cpus_per_actor=0.5, batch_size=workload.batch_size)
            times = []
            for checkpoints in per_round:
                started = time.perf_counter()
                scores = score_pool(manifest, checkpoints, columns, scoring, network_inputs=inputs, resident=mode == "resident")
                times.append(time.perf_counter() - started)
                assert len(scores) == manifest.num_pool
            release_resident_scorers()
            first = times[0] if mode == "resident" else None
            steady = times[1:] if mode == "resident" else times
            rows.append(_row(workload, manifest, f"{mode} x{count}", count, steady, first, plain=statistics.median(plain)))
        torch.set_num_threads(os.cpu_count() or 1)
    return rows


def _row(workload: Workload, manifest: PoolManifest, method: str, workers: int, times: list[float], first: float | None,
         plain: float | None = None) -> dict:
    median = statistics.median(times)
    return {"workload": workload.name, "pool": manifest.num_pool, "method": method, "workers": workers,
            "median_s": median, "rounds": len(times), "first_round_s": first,
            "samples_per_s": manifest.num_pool / median, "vs_plain": (plain / median) if plain else 1.0}


def write_results(rows: list[dict], machine: str, command: str, rounds: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring_overhead.json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows}, indent=2))
    lines = [
        "# Scoring per round: resident scorers, the streaming pass and a plain PyTorch loop", "",
        f"Machine: {machine}. Command: `{command}`. Median seconds per round over {rounds} rounds (resident: over rounds 2..{rounds};",
        "its first round, which starts the actors and reads their shards, is its own column). N actors of one thread each are",
        "compared with the plain loop at N torch threads; `vs plain` > 1 is faster than plain.", "",
        *(f"- `{w.name}`: {w.description}, batch {w.batch_size}, columns {', '.join(w.columns)}" for w in WORKLOADS.values()
          if any(r["workload"] == w.name for r in rows)), "",
        "| workload | pool | method | median s/round | samples/s | vs plain (same N) | first round s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        first = f"{r['first_round_s']:.2f}" if r["first_round_s"] is not None else "-"
        lines.append(f"| {r['workload']} | {r['pool']:,} | {r['method']} | {r['median_s']:.2f} | {r['samples_per_s']:,.0f} | "
                     f"{r['vs_plain']:.2f} | {first} |")
    (RESULTS / "scoring_overhead.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synthetic-size", type=int, default=2000, help="pool size of the ResNet-18 workload")
    parser.add_argument("--work-dir", default="outputs/bench_scoring_overhead")
    args = parser.parse_args()

    root = Path(args.work_dir).resolve()
    connect_ray(RayConfig(num_cpus=os.cpu_count(), object_store_memory_mb=1024))
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    command = (f"python benchmarks/scoring_overhead.py --workloads {' '.join(args.workloads)} --actors "
               f"{' '.join(map(str, args.actors))} --rounds {args.rounds} --synthetic-size {args.synthetic_size}")
    print(f"machine: {machine}")
    header = f"{'workload':>20} {'pool':>7} {'method':>13} {'s/round':>8} {'samples/s':>10} {'vs plain':>8} {'first s':>8}"
    print(header + "\n" + "-" * len(header))
    rows = []
    for name in args.workloads:
        workload = WORKLOADS[name]
        manifest = make_pool(name, root / "pools", args.synthetic_size)
        per_round = make_checkpoints(workload, manifest, root / "networks" / name, args.rounds)
        for row in run_workload(workload, manifest, per_round, args.actors):
            rows.append(row)
            first = f"{row['first_round_s']:.2f}" if row["first_round_s"] is not None else "-"
            print(f"{name:>20} {row['pool']:>7} {row['method']:>13} {row['median_s']:>8.2f} {row['samples_per_s']:>10.0f} "
                  f"{row['vs_plain']:>8.2f} {first:>8}", flush=True)
        write_results(rows, machine, command, args.rounds)


if __name__ == "__main__":
    main()
