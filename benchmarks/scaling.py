"""Large-pool scaling: osal_ray's scoring against a plain PyTorch loop, selection time, driver memory.

For synthetic pools of increasing size (8x8 generated images, 10 classes, 3 known), side by side
in one run on the same machine and the same Parquet files:

- ``plain``: one process reads the Parquet files with pyarrow, decodes, and runs the classifier
  and the K+1 detector in batches with PyTorch (all cores as torch threads);
- ``streaming xN``: osal_ray's streaming pass (Ray Data, an actor pool of N actors) computing the
  same columns JSOSAL needs (entropy, det_pred, det_mav, det_known_margin) and gathering them;
- ``resident xN``: the resident scorers (N actors that keep their shard across rounds); the
  repeats after the first are rounds with new weights, the first (start-up, shard reads) is its own column;
- selection: JSOSAL's select step on the gathered columns (budget 1000);
- driver memory: the bytes of the gathered columns, the driver's RSS growth over the pass, and
  the driver's peak RSS so far (sizes run in increasing order, so it is each size's peak).

The headline is the throughput ratio against plain. Writes benchmarks/results/scaling.{json,md,png}.

    python benchmarks/scaling.py [--sizes 100000 1000000 10000000] [--actors 1 2] [--modes streaming resident] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from osal_ray.cluster import connect_ray
from osal_ray.config import DataConfig, RayConfig, ScoringConfig
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import decode_images, pool_paths, to_model_input
from osal_ray.data.ray_pass import use_v2_reader
from osal_ray.scoring import score_pool
from osal_ray.scoring.resident import release_resident_scorers
from osal_ray.strategies import query
from osal_ray.training import NetworkSpec, save_network

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["entropy", "det_pred", "det_mav", "det_known_margin"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_pool(size: int, root: Path):
    config = DataConfig(dataset="synthetic", num_samples=size, num_classes=10, image_size=8, known_classes=3,
                        initial_fraction=0.001, test_fraction=0.01)
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    return materialize_pool(source, split, root / f"pool_{size}", num_files=8)


def make_networks(root: Path) -> dict[str, str]:
    """A classifier (3 outputs) and a detector (4 outputs); untrained weights cost the same to run."""
    torch.manual_seed(0)
    paths = {}
    for name, outputs in (("classifier", 3), ("detector", 4)):
        spec = NetworkSpec("mlp", outputs, 1, 8, {"hidden": 256})
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_network(spec.build(), spec, folder / "model.pt")
        paths[name] = str(folder)
    return paths


def plain_loop(manifest, checkpoints: dict[str, str], batch_size: int = 4096) -> tuple[float, int]:
    """The single-process baseline: pyarrow batches -> decode -> both networks -> the same columns."""
    from osal_ray.training import load_network

    torch.set_num_threads(os.cpu_count() or 1)
    classifier = load_network(checkpoints["classifier"])[0].eval()
    detector = load_network(checkpoints["detector"])[0].eval()
    started, rows = time.perf_counter(), 0
    outputs = []
    with torch.inference_mode():
        for path in pool_paths(manifest):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["id", "image"]):
                x = to_model_input(decode_images(batch.column("image"), manifest), manifest)
                log_p = torch.log_softmax(classifier(x), dim=1)
                logits = detector(x)
                outputs.append((
                    -(log_p.exp() * log_p).sum(1).numpy(), logits.argmax(1).numpy(), logits.max(1).values.numpy(),
                    (logits[:, :-1].max(1).values - logits[:, -1]).numpy(),
                ))
                rows += batch.num_rows
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["streaming", "resident"], choices=["streaming", "resident"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default="outputs/bench_scaling")
    parser.add_argument("--reader", choices=["auto", "v1", "v2"], default="auto", help="scoring.parquet_reader")
    args = parser.parse_args()

    root = Path(args.work_dir).resolve()
    checkpoints = make_networks(root / "networks")
    connect_ray(RayConfig(num_cpus=os.cpu_count(), object_store_memory_mb=2048))
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}; medians of {args.repeats} runs")
    header = (f"{'pool':>9} {'method':>16} {'seconds':>8} {'samples/s':>10} {'vs plain':>8} {'select s':>8} {'columns MB':>10} "
              f"{'RSS +MB':>8} {'peak MB':>8} {'first s':>8}")
    print(header + "\n" + "-" * len(header))
    results = RESULTS / ("scaling" if args.reader == "auto" else f"scaling_{args.reader}")
    rows = []
    for size in args.sizes:
        manifest = make_pool(size, root)
        plain = statistics.median(plain_loop(manifest, checkpoints)[0] for _ in range(args.repeats))
        rows.append({"pool": size, "method": "plain", "seconds": plain, "throughput": size / plain, "ratio": 1.0})
        print(f"{size:>9} {'plain':>16} {plain:>8.2f} {size / plain:>10.0f} {1.0:>8.2f}", flush=True)
        for mode in args.modes:
            for actors in args.actors:
                scoring = ScoringConfig(mode=mode, num_actors=actors, cpus_per_actor=0.5, batch_size=4096, parquet_reader=args.reader)
                times, selects, growth = [], [], []
                for _ in range(args.repeats + (mode == "resident")):
                    before = current_rss_mb()
                    started = time.perf_counter()
                    scores = score_pool(manifest, checkpoints, COLUMNS, scoring, network_inputs={"classifier": "image", "detector": "image"},
                                        resident=mode == "resident")
                    times.append(time.perf_counter() - started)
                    growth.append(current_rss_mb() - before)
                    started = time.perf_counter()
                    query("jsosal", scores, 1000, num_known=3, seed=0)
                    selects.append(time.perf_counter() - started)
                    column_mb = (scores.ids.nbytes + sum(v.nbytes for v in scores.columns.values())) / 2**20
                    del scores
                release_resident_scorers()
                first = times.pop(0) if mode == "resident" else None
                seconds = statistics.median(times)
                method = f"{mode} x{actors}" + (f" {'v2' if use_v2_reader(scoring, size) else 'v1'}" if mode == "streaming" else "")
                row = {
                    "pool": size, "method": method, "seconds": seconds, "throughput": size / seconds,
                    "ratio": plain / seconds, "select_seconds": statistics.median(selects), "columns_mb": column_mb,
                    "rss_growth_mb": statistics.median(growth), "driver_peak_rss_mb": peak_rss_mb(), "first_round_s": first,
                }
                rows.append(row)
                print(f"{size:>9} {row['method']:>16} {seconds:>8.2f} {row['throughput']:>10.0f} {row['ratio']:>8.2f} "
                      f"{row['select_seconds']:>8.2f} {column_mb:>10.1f} {row['rss_growth_mb']:>8.1f} {row['driver_peak_rss_mb']:>8.0f} "
                      f"{first if first is None else round(first, 2)!s:>8}", flush=True)

    RESULTS.mkdir(exist_ok=True)
    command = ("python benchmarks/scaling.py --sizes " + " ".join(map(str, args.sizes)) + " --actors "
               + " ".join(map(str, args.actors)) + " --modes " + " ".join(args.modes) + f" --repeats {args.repeats} --reader {args.reader}")
    results.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows}, indent=2))
    lines = [
        "# Scoring scaling: streaming pass and resident scorers vs a plain PyTorch loop", "",
        f"Machine: {machine}. Medians of {args.repeats} runs (resident: {args.repeats} rounds after its first, start-up round). "
        f"Command: `{command}`.", "",
        "Columns JSOSAL needs (classifier entropy; detector class, MAV, margin), MLP classifier + detector on 8x8 synthetic images.", "",
        "| pool | method | seconds | samples/s | throughput vs plain | JSOSAL select s | gathered columns MB | driver RSS growth MB "
        "| driver peak RSS MB | first round s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        extra = (f"{r['select_seconds']:.2f} | {r['columns_mb']:.1f} | {r['rss_growth_mb']:.1f} | {r['driver_peak_rss_mb']:.0f} | "
                 + (f"{r['first_round_s']:.2f} |" if r.get("first_round_s") is not None else "- |")) if "select_seconds" in r else "- | - | - | - | - |"
        lines.append(f"| {r['pool']:,} | {r['method']} | {r['seconds']:.2f} | {r['throughput']:,.0f} | {r['ratio']:.2f} | " + extra)
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(rows, results.with_suffix(".png"))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        part = [r for r in rows if r["method"] == method]
        axes[0].plot([r["pool"] for r in part], [r["throughput"] for r in part], marker="o", label=method)
        if not method.startswith("plain"):
            axes[1].plot([r["pool"] for r in part], [r["select_seconds"] for r in part], marker="o", label=method)
            axes[2].plot([r["pool"] for r in part], [r["rss_growth_mb"] for r in part], marker="o", label=f"{method} RSS growth")
            axes[2].plot([r["pool"] for r in part], [r["columns_mb"] for r in part], linestyle="--", label=f"{method} columns")
    for ax, title in zip(axes, ["scoring throughput (samples/s)", "JSOSAL selection (s)", "driver memory (MB)"]):
        ax.set_xscale("log")
        ax.set_xlabel("pool size")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
