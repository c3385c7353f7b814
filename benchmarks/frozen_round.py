"""One frozen-regime round on a ~50k pool: train the heads, score the pool, select 250 (issue 24 §3).

A real job through ``prepare_experiment`` / ``run_experiment``: Fashion-MNIST with 84% of the
training set as the pool (50,400 images), PCA-64 pixel features, linear heads, 2,000 labels to start
(OOD-ratio protocol), 250 queries a round. ``badge`` trains the classifier and selects by k-means++
on gradient embeddings; ``osal`` also trains the K+1 detector and runs the weighted k-means++. Each
is timed with inline scoring (the trajectory's process scores the pool) and with a resident scorer
actor, one trajectory at a time. A round's wall time is the time between two consecutive rounds'
table rows; its phases come from ``rounds.parquet`` (training, scoring, selection, labelling) and
the rest (the state written, the pending query, Ray's calls) is reported as overhead. Round 1 is
left out of the medians (it reads the pool into the scorer).

Writes ``benchmarks/results/frozen_round.{md,json}``. Needs ``apt-get install dataset-fashion-mnist``.

    python benchmarks/frozen_round.py [--rounds 6] [--strategies badge osal] [--modes inline resident]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PHASES = ("seconds_train", "seconds_score", "seconds_gather", "seconds_select", "seconds_label")
GOAL_S = 1.5


def job(strategy: str, mode: str, rounds: int, output_dir: Path, overrides: list[str]):
    from osal_ray.config import load_config

    return load_config(str(REPO / "jobs" / "fashion_mnist.yaml"), [
        f"strategies=[{strategy}]", "seeds=[0]", f"output_dir={output_dir}", "data.protocol=ood_ratio",
        "data.known_classes=4", "data.ood_ratio=0.6", "data.initial_size=2000", "data.train_fraction=0.84",
        "features.extractor=pixels", "model.classifier=linear", "model.kwargs={}", f"al.rounds={rounds}", "al.budget=250",
        "train.epochs=30", "train.batch_size=256", "train.lr=0.1", "train.lr_step=15",
        f"scoring.mode={mode}", "execution.max_concurrent_trajectories=1", *overrides])


def time_rounds(strategy: str, mode: str, rounds: int, work: Path, overrides: list[str]) -> list[dict]:
    """Per round after the first: wall seconds, each phase, and the overhead."""
    from osal_ray.experiment import prepare_experiment, run_experiment

    output_dir = work / f"{strategy}-{mode}"
    stamps: dict[int, float] = {}

    def log(line: str) -> None:
        parts = line.split()
        if len(parts) > 3 and parts[0] == strategy and parts[1] == "0" and parts[2].isdigit():
            stamps[int(parts[2])] = time.perf_counter()

    run_experiment(prepare_experiment(job(strategy, mode, rounds, output_dir, overrides), log=log), log=log)
    frame = pd.read_parquet(output_dir / "rounds.parquet").set_index("round")
    rows = []
    for r in range(2, rounds + 1):
        phases = {p.removeprefix("seconds_"): float(frame.loc[r, p]) for p in PHASES}
        wall = stamps[r] - stamps[r - 1]
        rows.append({"strategy": strategy, "mode": mode, "round": r, "wall": wall, **phases,
                     "overhead": wall - sum(phases.values()), "labeled": int(frame.loc[r, "n_labeled_known"] + frame.loc[r, "n_invalid"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--strategies", nargs="+", default=["badge", "osal"])
    parser.add_argument("--modes", nargs="+", default=["inline", "resident"])
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--name", default="frozen_round")
    args = parser.parse_args()
    from osal_ray.cluster import connect_ray
    from osal_ray.config import RayConfig

    connect_ray(RayConfig())
    work = Path(tempfile.mkdtemp(prefix="osal-ray-frozen-"))
    rows = [row for strategy in args.strategies for mode in args.modes
            for row in time_rounds(strategy, mode, args.rounds, work, args.overrides)]
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["strategy", "mode"], sort=False).median(numeric_only=True).drop(columns="round").reset_index()
    command = "python benchmarks/frozen_round.py " + " ".join(
        [f"--rounds {args.rounds}", f"--strategies {' '.join(args.strategies)}", f"--modes {' '.join(args.modes)}",
         *[f"--set {o}" for o in args.overrides]])
    lines = [
        "# One frozen-regime round on a 50,400-image pool", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}. Command: `{command}`. "
        "Fashion-MNIST (84% of the training set as the pool), PCA-64 pixel features, linear heads (30 epochs, batch 256), "
        "2,000 initial labels (OOD ratio 60%, 4 known classes), 250 queries per round; medians over rounds "
        f"2..{args.rounds} of one trajectory, one at a time. Goal: at most {GOAL_S} s a round.", "",
        "| strategy | scoring | round (s) | train | score | select | label | overhead | goal |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in summary.to_dict("records"):
        lines.append(f"| {row['strategy']} | {row['mode']} | {row['wall']:.2f} | {row['train']:.2f} | {row['score'] + row['gather']:.2f} | "
                     f"{row['select']:.2f} | {row['label']:.3f} | {row['overhead']:.2f} | "
                     f"{'met' if row['wall'] <= GOAL_S else 'not met'} |")
    lines += ["", "`overhead`: the round's wall time less its phases (the run state written, the pending query, the "
              "tables, Ray's calls)."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": command, "machine": platform.machine(),
                                                            "cpus": os.cpu_count(), "rounds": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
