"""Time JSOSAL's selection step (per-class Bayesian mixtures over MAVs, top-a, top-b by entropy).

Side by side in one run, for pools of 10k, 100k and 1M samples and K = 2, 10, 100 known classes:

- ``sequential``: the straightforward fit, one class after another, on every sample;
- ``processes``: the same full fits, classes spread over worker processes;
- ``osal_ray``: the strategy as shipped (processes when the pool is large, fits on at most
  50k samples per class, posteriors for every sample).

Reports medians over repeats, the speed-up against ``sequential``, and how far the shipped
answer is from the sequential one (largest probability difference, share of identical queries).

    python benchmarks/selection_speed.py [--repeats 3] [--sizes 10000 100000 1000000] [--ks 2 10 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from osal_ray.strategies import PoolScores, query
from osal_ray.strategies.mixtures import BGMM_DEFAULT_OPTIONS, MixtureSettings, known_probability

RESULTS = Path(__file__).parent / "results"


def synthetic_pool(n: int, k: int, seed: int) -> PoolScores:
    """Scores shaped like a detector's: per predicted class, overlapping known/unknown MAV modes."""
    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, k + 1, n)
    known = rng.random(n) < 0.4
    mav = np.where(known, rng.normal(6.0, 1.3, n), rng.normal(3.0, 1.3, n)) + 0.2 * (predicted % 5)
    return PoolScores(
        np.arange(n),
        {
            "det_pred": predicted,
            "det_mav": mav.astype(np.float32),
            "det_known_margin": rng.normal(size=n).astype(np.float32),
            "entropy": rng.random(n).astype(np.float32),
        },
    )


def run_variant(pool: PoolScores, k: int, budget: int, params: dict) -> tuple[float, np.ndarray, np.ndarray]:
    started = time.perf_counter()
    selection = query("jsosal", pool, budget, num_known=k, seed=0, params=params)
    return time.perf_counter() - started, selection.indices, selection.diagnostics["known_probability"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 10, 100])
    parser.add_argument("--budget", type=int, default=1000)
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    variants = {
        "sequential": {"n_jobs": 1, "fit_sample_size": None},
        "processes": {"n_jobs": cpus, "fit_sample_size": None},
        "osal_ray": {},
    }
    # Start the worker processes once, so that their start-up is not billed to the first row.
    known_probability(np.zeros(4, dtype=int), np.arange(4.0), 1, MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS), 0, n_jobs=2)
    run_variant(synthetic_pool(200_000, 2, 0), 2, 10, {"n_jobs": cpus})

    rows = []
    header = f"{'pool':>9} {'K':>4} " + " ".join(f"{name + ' s':>13}" for name in variants) + f" {'speed-up':>9} {'max |dp|':>9} {'same queries':>12}"
    print(f"machine: {platform.node()} {platform.machine()}, {cpus} CPUs; medians of {args.repeats} runs; budget b={args.budget}, a=2b")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for k in args.ks:
            pool = synthetic_pool(n, k, seed=n + k)
            times: dict[str, list[float]] = {name: [] for name in variants}
            answers = {}
            for _ in range(args.repeats):
                for name, params in variants.items():
                    seconds, indices, probability = run_variant(pool, k, args.budget, params)
                    times[name].append(seconds)
                    answers[name] = (indices, probability)
            medians = {name: statistics.median(values) for name, values in times.items()}
            reference, shipped = answers["sequential"], answers["osal_ray"]
            row = {
                "pool": n,
                "k": k,
                **{f"{name}_s": medians[name] for name in variants},
                "speedup": medians["sequential"] / medians["osal_ray"],
                "max_abs_probability_difference": float(np.abs(reference[1] - shipped[1]).max()),
                "same_queries": len(np.intersect1d(reference[0], shipped[0])) / len(reference[0]),
            }
            rows.append(row)
            print(
                f"{n:>9} {k:>4} " + " ".join(f"{medians[name]:>13.3f}" for name in variants)
                + f" {row['speedup']:>9.2f} {row['max_abs_probability_difference']:>9.4f} {row['same_queries']:>12.3f}",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": f"{platform.node()} {platform.machine()}", "cpus": cpus, "repeats": args.repeats, "budget": args.budget,
            "command": "python benchmarks/selection_speed.py " + " ".join(f"--{k} {v}" if not isinstance(v, list) else f"--{k} " + " ".join(map(str, v)) for k, v in vars(args).items())}
    (RESULTS / "selection_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# JSOSAL selection step: time per round", "",
        f"Machine: {meta['machine']}, {cpus} CPUs. Medians of {args.repeats} runs. Budget b = {args.budget}, a = 2b.",
        f"Command: `{meta['command']}`", "",
        "| pool | K | sequential s | processes s | osal_ray s | speed-up | max abs prob. diff | same queries |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['pool']:,} | {r['k']} | {r['sequential_s']:.3f} | {r['processes_s']:.3f} | {r['osal_ray_s']:.3f} | "
        f"{r['speedup']:.2f} | {r['max_abs_probability_difference']:.4f} | {r['same_queries']:.3f} |"
        for r in rows
    ]
    (RESULTS / "selection_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
