"""Time JSOSAL's selection step: per-class Bayesian mixtures over MAVs, then top-a and top-b.

Side by side in one run, for pools of 10k to 10M samples and K = 2, 10, 100 known classes, three
ways to fit the per-class mixtures, all on the same data (the same seeded subsample of at most
``fit_sample_size`` = 50k samples per class) with the same seeds:

- ``sklearn sequential``: one scikit-learn BayesianGaussianMixture per class, one after another
  (``backend: sklearn, n_jobs: 1``);
- ``sklearn processes``: the same estimators spread over worker processes (``backend: sklearn``,
  ``n_jobs`` automatic: the path shipped before the vectorised fit);
- ``vectorised``: every class's mixture in one vectorised pass (``backend: vectorised``, the default).

Reports medians over repeats of the whole selection step, the speed-up of the vectorised fit
against both, how far its answer is from the sequential one (largest probability difference,
share of identical top-a and of identical queries), the 1-minute load average around each row
(the machine may be shared) and, for pools from 1M, the peak memory the vectorised selection
allocates (tracemalloc, a separate untimed run).

    python benchmarks/selection_speed.py [--repeats 3] [--large-repeats 1] [--sizes 10000 100000 1000000 10000000]
        [--ks 2 10 100] [--budget 1000] [--name selection_speed] [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from osal_ray.strategies import PoolScores, query
from osal_ray.strategies.mixtures import BGMM_DEFAULT_OPTIONS, MixtureSettings, known_probability

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "sklearn_sequential": {"backend": "sklearn", "n_jobs": 1},
    "sklearn_processes": {"backend": "sklearn"},
    "vectorised": {"backend": "vectorised"},
}
LARGE = 10_000_000
# Variants whose work all happens in this process (their CPU seconds are measurable here).
SINGLE_PROCESS = ("sklearn_sequential", "vectorised")


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


def run_variant(pool: PoolScores, k: int, budget: int, params: dict) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """Wall-clock and CPU seconds of this process (worker processes' CPU not included), queries, probabilities, top-a."""
    started, cpu = time.perf_counter(), time.process_time()
    selection = query("jsosal", pool, budget, num_known=k, seed=0, params=params)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seconds, cpu, selection.indices, selection.diagnostics["known_probability"], np.flatnonzero(selection.diagnostics["top_a"])


def peak_megabytes(pool: PoolScores, k: int, budget: int) -> float:
    tracemalloc.start()
    try:
        query("jsosal", pool, budget, num_known=k, seed=0, params=VARIANTS["vectorised"])
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=1, help=f"repeats for pools of {LARGE:,} and more")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 10, 100])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--name", default="selection_speed", help="results/<name>.md and .json")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. what else ran on the machine)")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in args.variants}
    reference = "sklearn_sequential" if "sklearn_sequential" in variants else None

    cpus = os.cpu_count() or 1
    # Start the worker processes and import everything once, so that no row pays for it.
    warm = MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS, backend="sklearn")
    known_probability(np.zeros(4, dtype=int), np.arange(4.0), 1, warm, 0, n_jobs=2)
    for params in variants.values():
        run_variant(synthetic_pool(200_000, 2, 0), 2, 10, params)

    cpu_names = [name for name in variants if name in SINGLE_PROCESS]
    columns = " ".join(f"{name + ' s':>20}" for name in variants) + "".join(f" {name[-10:] + ' cpu':>14}" for name in cpu_names)
    header = (f"{'pool':>10} {'K':>4} {'reps':>4} {columns} {'x seq':>7} {'x proc':>7} {'max |dp|':>9} {'top-a':>6} "
              f"{'queries':>7} {'load':>9} {'peak MB':>8}")
    print(f"machine: {platform.node()} {platform.machine()}, {cpus} CPUs; budget b={args.budget}, a=2b")
    print(header)
    print("-" * len(header))
    rows = []
    for n in args.sizes:
        repeats = args.large_repeats if n >= LARGE else args.repeats
        for k in args.ks:
            pool = synthetic_pool(n, k, seed=n + k)
            load = [os.getloadavg()[0]]
            times: dict[str, list[float]] = {name: [] for name in variants}
            cpu_times: dict[str, list[float]] = {name: [] for name in variants}
            answers = {}
            for _ in range(repeats):
                for name, params in variants.items():
                    seconds, cpu, indices, probability, top_a = run_variant(pool, k, args.budget, params)
                    times[name].append(seconds)
                    cpu_times[name].append(cpu)
                    answers[name] = (indices, probability, top_a)
                    load.append(os.getloadavg()[0])
            medians = {name: statistics.median(values) for name, values in times.items()}
            row = {"pool": n, "k": k, "repeats": repeats, **{f"{name}_s": medians[name] for name in variants},
                   **{f"{name}_cpu_s": statistics.median(cpu_times[name]) for name in variants if name in SINGLE_PROCESS},
                   "load_min": min(load), "load_max": max(load)}
            if "vectorised" in variants:
                mine = answers["vectorised"]
                for name, key in (("sklearn_sequential", "speedup_vs_sequential"), ("sklearn_processes", "speedup_vs_processes")):
                    if name in variants:
                        row[key] = medians[name] / medians["vectorised"]
                if reference:
                    ref = answers[reference]
                    row["max_abs_probability_difference"] = float(np.abs(ref[1] - mine[1]).max())
                    row["same_top_a"] = len(np.intersect1d(ref[2], mine[2])) / len(ref[2])
                    row["same_queries"] = len(np.intersect1d(ref[0], mine[0])) / len(ref[0])
                if n >= 1_000_000:
                    row["vectorised_peak_mb"] = peak_megabytes(pool, k, args.budget)
            rows.append(row)
            print(f"{n:>10} {k:>4} {repeats:>4} " + " ".join(f"{medians[name]:>20.3f}" for name in variants)
                  + "".join(f" {row[name + '_cpu_s']:>14.3f}" for name in cpu_names)
                  + f" {_fmt(row.get('speedup_vs_sequential'), '7.1f')} {_fmt(row.get('speedup_vs_processes'), '7.1f')}"
                  + f" {_fmt(row.get('max_abs_probability_difference'), '9.1e')} {_fmt(row.get('same_top_a'), '6.3f')}"
                  + f" {_fmt(row.get('same_queries'), '7.3f')} {row['load_min']:>4.1f}-{row['load_max']:<4.1f}"
                  + f" {_fmt(row.get('vectorised_peak_mb'), '8.0f')}", flush=True)
            del pool, answers
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_results(args, rows, cpus, max_rss_mb)


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{value:>{spec}}" if value is not None else f"{'-':>{width}}"


def write_results(args, rows: list[dict], cpus: int, max_rss_mb: float) -> None:
    command = (f"python benchmarks/selection_speed.py --repeats {args.repeats} --large-repeats {args.large_repeats} "
               f"--sizes {' '.join(map(str, args.sizes))} --ks {' '.join(map(str, args.ks))} --budget {args.budget}"
               + (f" --variants {' '.join(args.variants)}" if args.variants != list(VARIANTS) else "")
               + (f" --name {args.name}" if args.name != "selection_speed" else ""))
    meta = {"machine": f"{platform.node()} {platform.machine()}", "cpus": cpus, "repeats": args.repeats,
            "large_repeats": args.large_repeats, "budget": args.budget, "command": command, "note": args.note,
            "max_rss_mb": max_rss_mb, "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    names = [name for name in VARIANTS if name in args.variants]
    cpu_names = [name for name in names if name in SINGLE_PROCESS]
    lines = [
        "# JSOSAL selection step: vectorised mixtures against one scikit-learn fit per class", "",
        f"Machine: {meta['machine']}, {cpus} CPUs, {meta['date']}. Medians of {args.repeats} runs "
        f"({args.large_repeats} for pools of {LARGE:,} and more: the `reps` column). Budget b = {args.budget}, a = 2b. "
        "Every variant fits the same seeded subsample (at most 50,000 samples per class) with the same seeds; "
        "times are the whole selection step (fits, posteriors for every candidate, top-a, top-b).",
        f"Command: `{command}`", "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "Columns: seconds per variant (wall clock); `cpu s`: CPU seconds of the sequential loop and of the vectorised "
        "fit (single-process variants; less sensitive to other work on the machine than the wall clock); "
        "`x seq` / `x proc`: the vectorised fit's speed-up against the sequential "
        "scikit-learn loop / the scikit-learn processes; `max abs dp`: largest |known probability difference| against "
        "the sequential loop over all candidates; `same top-a` / `same queries`: share of JSOSAL's top-a and of its b "
        "queries that are the same; `load`: the machine's 1-minute load average from the row's start to its end "
        f"({cpus} CPUs: above {cpus} means other work competed for them); `peak MB`: memory the vectorised selection "
        f"allocates at its peak (tracemalloc). The process's peak RSS over the run was {max_rss_mb:,.0f} MB.", "",
        "| pool | K | reps | " + " | ".join(f"{name.replace('_', ' ')} s" for name in names)
        + "".join(f" | {name.replace('_', ' ')} cpu s" for name in cpu_names)
        + " | x seq | x proc | max abs dp | same top-a | same queries | load | peak MB |",
        "| ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + "".join(" | ---:" for _ in cpu_names)
        + " | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [f"{r['pool']:,}", str(r["k"]), str(r["repeats"])] + [f"{r[name + '_s']:.3f}" for name in names]
        cells += [f"{r[name + '_cpu_s']:.3f}" for name in cpu_names]
        cells += [_cell(r.get("speedup_vs_sequential"), ".1f"), _cell(r.get("speedup_vs_processes"), ".1f"),
                  _cell(r.get("max_abs_probability_difference"), ".1e"), _cell(r.get("same_top_a"), ".3f"),
                  _cell(r.get("same_queries"), ".3f"), f"{r['load_min']:.1f}-{r['load_max']:.1f}",
                  _cell(r.get("vectorised_peak_mb"), ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


def _cell(value, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


if __name__ == "__main__":
    main()
