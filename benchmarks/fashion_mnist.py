"""Fashion-MNIST evidence: every strategy under identical splits and seeds, 2/3/4 known classes.

Runs ``jobs/fashion_mnist.yaml`` once per number of known classes (class-mismatch protocol,
20/30/40% of the classes known, 1% initial), all strategies x seeds in one Ray session, then
writes to ``benchmarks/results/fashion_mnist/``:

- ``table.md`` / ``table.csv``: final accuracy, final recall, mean precision and AUBC per
  strategy, mean ± std over seeds;
- ``curves_k<K>.png``: accuracy, precision and recall against labels bought;
- ``rounds.parquet``: every round of every run (the raw numbers behind the table).

Runs resume: the same command again continues after the last finished round.

    python benchmarks/fashion_mnist.py [--known 2 3 4] [--seeds 0 1 2] [--strategies ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from osal_ray.cluster import connect_ray
from osal_ray.config import load_config
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment.outputs import plot_curves

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fashion_mnist"
METRICS = ["last_accuracy", "final_recall", "mean_precision", "aubc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "jobs" / "fashion_mnist.yaml"))
    parser.add_argument("--known", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "bench_fashion_mnist"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    configs = []
    for k in args.known:
        overrides = [f"data.known_classes={k}", f"seeds={args.seeds}", f"output_dir={args.output_dir}/k{k}", *args.overrides]
        if args.strategies:
            overrides.append(f"strategies=[{', '.join(args.strategies)}]")
        configs.append((k, load_config(args.config, overrides)))
    prepared = [(k, prepare_experiment(config)) for k, config in configs]  # all input checks before Ray
    connect_ray(configs[0][1].ray)

    started = time.perf_counter()
    rows, frames = [], []
    for k, experiment in prepared:
        summary = run_experiment(experiment)
        out = experiment.output_dir
        frame = pd.read_parquet(out / "rounds.parquet").assign(known_classes=k)
        frames.append(frame)
        for strategy in experiment.config.strategies:
            runs = summary["runs"][strategy]
            row = {"known_classes": k, "known_percent": round(100 * k / 10), "strategy": strategy, "seeds": len(runs)}
            for metric in METRICS:
                values = np.array([runs[s][metric] for s in runs], dtype=float)
                row[f"{metric}_mean"] = float(np.nanmean(values))
                row[f"{metric}_std"] = float(np.nanstd(values))
            rows.append(row)

    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "table.csv", index=False)
    pd.concat(frames, ignore_index=True).to_parquet(RESULTS / "rounds.parquet", index=False)
    minutes = (time.perf_counter() - started) / 60
    config = prepared[0][1].config
    command = "python benchmarks/fashion_mnist.py " + " ".join(
        [f"--known {' '.join(map(str, args.known))}", f"--seeds {' '.join(map(str, args.seeds))}"]
        + ([f"--strategies {' '.join(args.strategies)}"] if args.strategies else [])
        + [f"--set {o}" for o in args.overrides]
    )
    lines = [
        "# Fashion-MNIST, class-mismatch protocol", "",
        f"Command: `{command}` (config `jobs/fashion_mnist.yaml`). Machine: {platform.node()} {platform.machine()}, "
        f"this invocation took {minutes:.0f} min (runs that an earlier invocation finished are resumed, not re-run).", "",
        f"Pool: {config.data.train_fraction:.0%} stratified subset of the 60,000 training images; "
        f"{config.data.initial_fraction:.0%} of the known-class pool labeled at the start; "
        f"{config.al.budget} labels per round for {config.al.rounds} rounds; {config.model.classifier} "
        f"{config.model.kwargs}, {config.train.epochs} epochs per round, networks re-initialised every round. "
        f"Mean ± std over seeds {args.seeds}; every strategy sees the same split per seed.", "",
        "| known | strategy | final accuracy | final recall | mean precision | AUBC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = " | ".join(f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS)
        lines.append(f"| {row['known_classes']} ({row['known_percent']}%) | {row['strategy']} | {cells} |")
    (RESULTS / "table.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "meta.json").write_text(json.dumps({"command": command, "minutes": minutes, "seeds": args.seeds}, indent=2))
    print("\n".join(lines))
    for k, experiment in prepared:
        plot_curves(pd.read_parquet(experiment.output_dir / "rounds.parquet"), RESULTS / f"curves_k{k}.png",
                    title=f"Fashion-MNIST, {k} known classes (mean ± std over seeds {args.seeds})")


if __name__ == "__main__":
    main()
