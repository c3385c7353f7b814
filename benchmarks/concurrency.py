"""Concurrent trajectories: the 12-trajectory Fashion-MNIST job sequential vs concurrent, side by side.

``jobs/fashion_mnist.yaml`` (6 strategies) with 2 seeds is 12 (strategy, seed) trajectories. Each
mode runs the whole job in its own process with a fresh embedded Ray and its own output directory:

- ``sequential``: ``execution.max_concurrent_trajectories: 1`` (one trajectory after the other, in the driver);
- ``concurrent``: ``execution.max_concurrent_trajectories`` as given (default null: as many as the
  cluster's CPUs hold), each trajectory a Ray task.

Measured per mode: wall time (Ray start to shutdown; and the run itself), the CPU time of the run's
whole process tree (the driver, Ray's own processes and every worker, reaped by this process as a
child subreaper, so that short-lived workers count too) and CPU utilisation = CPU time / (wall x
cores); the machine-wide busy fraction from /proc/stat says how much others used the CPU meanwhile.
Both modes must write identical queries.parquet. Writes benchmarks/results/concurrency.{md,json}.

    python benchmarks/concurrency.py [--seeds 0 1] [--concurrent auto] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def child(args: argparse.Namespace) -> None:
    """One mode's run: prepare, start Ray, run, shut Ray down; print the timings as JSON on the last line."""
    import ray

    from osal_ray.cluster import connect_ray
    from osal_ray.config import load_config
    from osal_ray.experiment import prepare_experiment, run_experiment

    started = time.perf_counter()
    overrides = [f"seeds={args.seeds}", f"output_dir={args.output_dir}", f"execution.max_concurrent_trajectories={args.limit}",
                 *args.overrides]
    config = load_config(args.config, overrides)
    prepared = prepare_experiment(config)
    connect_ray(config.ray)
    ray_cpus = ray.cluster_resources().get("CPU")
    run_started = time.perf_counter()
    summary = run_experiment(prepared)
    run_seconds = time.perf_counter() - run_started
    ray.shutdown()
    trajectories = sum(len(seeds) for seeds in summary["runs"].values())
    print(json.dumps({"run_seconds": run_seconds, "child_seconds": time.perf_counter() - started,
                      "trajectories": trajectories, "ray_cpus": ray_cpus}))


def busy_jiffies() -> tuple[int, int]:
    """Machine-wide (busy, total) CPU jiffies from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_orphans(deadline_s: float = 30.0) -> None:
    """Wait for every process that was reparented to us (Ray workers outlive their raylet by a moment)."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.2)


def measure(name: str, limit: str, args: argparse.Namespace, output_dir: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--limit", limit, "--output-dir", str(output_dir),
               "--config", args.config, "--seeds", *map(str, args.seeds)] + [x for o in args.overrides for x in ("--set", o)]
    print(f"\n=== {name}: execution.max_concurrent_trajectories={limit} ===", flush=True)
    cpu_before, (busy_before, total_before) = children_cpu(), busy_jiffies()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    last = ""
    for line in process.stdout:
        print(f"  {line}", end="", flush=True)
        last = line if line.startswith('{"run_seconds"') else last
    code = process.wait()
    wall = time.perf_counter() - started
    reap_orphans()
    cpu = children_cpu() - cpu_before
    busy_after, total_after = busy_jiffies()
    if code != 0:
        raise SystemExit(f"{name} run failed with exit code {code}")
    timings = json.loads(last)
    cores = os.cpu_count() or 1
    return {"mode": name, "max_concurrent_trajectories": limit, "wall_s": wall, **timings, "cpu_s": cpu,
            "cpu_utilisation": cpu / (wall * cores), "machine_busy": (busy_after - busy_before) / max(1, total_after - total_before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "jobs" / "fashion_mnist.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--concurrent", default="null", help="max_concurrent_trajectories of the concurrent run (null: auto)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limit", default="1", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.seeds = "[" + ",".join(map(str, args.seeds)) + "]"
        child(args)
        return

    # Orphaned Ray workers are reparented to this process, which reaps them: their CPU time counts.
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    import pandas as pd

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="osal_concurrency_"))
    try:
        rows = [measure("sequential", "1", args, workdir / "sequential"),
                measure("concurrent", args.concurrent, args, workdir / "concurrent")]
        identical = pd.read_parquet(workdir / "sequential" / "queries.parquet").equals(
            pd.read_parquet(workdir / "concurrent" / "queries.parquet"))
        rounds = [pd.read_parquet(workdir / mode / "rounds.parquet") for mode in ("sequential", "concurrent")]
        columns = ["strategy", "seed", "round", "n_labeled_known", "n_invalid", "budget_spent", "accuracy", "precision", "recall"]
        identical_rounds = rounds[0][columns].equals(rounds[1][columns])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]

    header = (f"| mode | max_concurrent_trajectories | trajectories | wall (s) | run (s) | CPU time (s) | CPU utilisation "
              f"| machine busy (all users) |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['mode']} | {r['max_concurrent_trajectories']} | {r['trajectories']} | {r['wall_s']:.1f} | {r['run_seconds']:.1f} "
        f"| {r['cpu_s']:.1f} | {100 * r['cpu_utilisation']:.0f}% | {100 * r['machine_busy']:.0f}% |" for r in rows]
    table = "\n".join(lines)
    summary = (f"speed-up (wall, sequential / concurrent): {speedup:.2f}x; identical queries.parquet: {identical}; "
               f"identical rounds.parquet metrics: {identical_rounds}")
    print("\n" + table + "\n\n" + summary)

    command = "python benchmarks/concurrency.py " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--concurrent {args.concurrent}"] + [f"--set {o}" for o in args.overrides])
    meta = {"command": command, "config": args.config, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_before": load_before, "speedup": speedup, "identical_queries": identical,
            "identical_rounds": identical_rounds, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "concurrency.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / "concurrency.md").write_text(
        f"# Concurrent trajectories: sequential vs concurrent (issue 14 §1)\n\n"
        f"`{command}`\n\n"
        f"{Path(args.config).name} ({rows[0]['trajectories']} trajectories: its strategies x seeds "
        f"{args.seeds}{', with ' + ', '.join(args.overrides) if args.overrides else ''}), each mode in its own process with "
        f"a fresh embedded Ray ({rows[0]['ray_cpus']:.0f} CPUs), on {os.cpu_count()} cores (load average before: "
        f"{' '.join(f'{x:.2f}' for x in load_before)}).\n\n"
        f"{table}\n\n{summary}\n\n"
        "- wall: Ray start to shutdown (the child process's life); run: `run_experiment` alone.\n"
        "- CPU time: user + system time of the run's whole process tree (driver, GCS, raylet, every Ray worker; "
        "workers orphaned at shutdown are reaped by the benchmark as a child subreaper, so they count).\n"
        "- CPU utilisation: CPU time / (wall x cores). Machine busy: /proc/stat over the same interval, every "
        "user's processes (other engineers' jobs included).\n"
    )
    print(f"\nwrote {RESULTS / 'concurrency.md'}")


if __name__ == "__main__":
    main()
