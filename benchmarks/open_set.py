"""Open-set benchmark: every strategy on harder Fashion-MNIST settings, paired against random.

Settings live in ``benchmarks/open_set_settings.yaml`` (the base job plus overrides per setting:
both protocols, 4 or 6 known classes, small initial sets). Every strategy runs on the same split
per seed, so each seed's difference to random is a paired observation; the table reports the
mean of those differences with a 95% t-interval over seeds, next to mean ± std of each metric.
``--sweep-a`` also runs JSOSAL with a = m x b for each multiple m (a is not given in the paper); the
main comparison's ``jsosal`` is the sweep's point at its default multiple, so that one need not rerun.

Writes to ``benchmarks/results/open_set/`` (``--results-dir``):

- ``table.md`` / ``table.csv``: per setting and strategy, AUBC, final accuracy, final recall and
  mean precision (mean ± std), and AUBC and final recall minus random's (paired, 95% CI);
- ``sweep_a.md`` / ``sweep_a.csv``: JSOSAL's a sweep, the same columns;
- ``rounds.parquet``: every round of every run; ``curves_<setting>.png``: the curves.

Runs resume; settings can run in separate processes (``--settings``) on one ``--output-dir``, and
each invocation rewrites the tables from every finished run under it (``--summarize`` only does that).

    python benchmarks/open_set.py [--settings ...] [--seeds 0 1 2 3 4] [--strategies ...] [--sweep-a 1 1.5 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from osal_ray.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SETTINGS_FILE = Path(__file__).with_name("open_set_settings.yaml")
METRICS = ("aubc", "last_accuracy", "final_recall", "mean_precision")
PAIRED = ("aubc", "final_recall")
ALL_STRATEGIES = ("random", "uncertainty", "entropy", "margin", "coreset", "badge", "bald", "ll",
                  "lfosa", "jsosal", "jsosal_no_entropy", "eoal", "mqnet", "eaoa", "e2oal", "bual", "osal")
REFERENCE = "random"
COMMANDS_FILE = "commands.txt"


@dataclass(frozen=True)
class Run:
    """One experiment of the benchmark: a setting, its strategies, and where it writes."""

    setting: str
    label: str  # "" for the main comparison, e.g. "a=1.5b" for a sweep variant
    config: ExperimentConfig


def load_settings(path: Path = SETTINGS_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def build_runs(args: argparse.Namespace, spec: dict) -> list[Run]:
    """Every experiment this invocation runs, configs fully checked by ``load_config``."""
    base = str(REPO / spec["base"])
    runs = []
    for name in args.settings:
        setting = spec["settings"][name]
        common = [f"{k}={v}" for k, v in {**spec.get("common", {}), **setting["set"]}.items()]
        seeds = f"seeds=[{', '.join(map(str, args.seeds))}]"
        out = Path(args.output_dir) / name
        if args.strategies:
            strategies = f"strategies=[{', '.join(args.strategies)}]"
            runs.append(Run(name, "", load_config(base, common + [seeds, strategies, f"output_dir={out}/main", *args.overrides])))
        for multiple in args.sweep_a:
            overrides = common + [seeds, "strategies=[jsosal]", f"strategy_params.jsosal.a_multiple={multiple}",
                                  f"output_dir={out}/jsosal_a{multiple:g}", *args.overrides]
            runs.append(Run(name, f"a={multiple:g}b", load_config(base, overrides)))
    return runs


def main_a_multiple(config_file: Path) -> float | None:
    """JSOSAL's a / b in a finished main comparison (None where it fixed ``a`` as a count)."""
    from osal_ray.strategies.open_set import JsosalParams

    params = (yaml.safe_load(config_file.read_text()).get("strategy_params") or {}).get("jsosal") or {}
    if params.get("a") is not None:
        return None
    return float(params.get("a_multiple", JsosalParams.a_multiple))


def t_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired differences (NaN bounds with fewer than 2)."""
    from osal_ray.experiment.comparison import mean_interval

    return mean_interval(differences)


def per_seed(summary: dict) -> dict[str, dict[int, dict[str, float]]]:
    """strategy -> seed -> metric, from an experiment's summary.json."""
    return {s: {int(seed): run for seed, run in runs.items()} for s, runs in summary["runs"].items()}


def table_rows(setting: str, runs: dict[str, dict[int, dict[str, float]]], reference: dict[int, dict[str, float]] | None,
               rename: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for strategy, seeds in runs.items():
        row: dict = {"setting": setting, "strategy": (rename or {}).get(strategy, strategy), "seeds": len(seeds)}
        for metric in METRICS:
            values = np.array([seeds[s][metric] if seeds[s][metric] is not None else np.nan for s in sorted(seeds)], dtype=float)
            present = values[np.isfinite(values)]  # a metric can be missing (recall without knowns)
            row[f"{metric}_mean"] = float(present.mean()) if len(present) else math.nan
            row[f"{metric}_std"] = float(present.std()) if len(present) else math.nan
        for metric in PAIRED:
            shared = sorted(set(seeds) & set(reference or {}))
            diffs = np.array([seeds[s][metric] - reference[s][metric] for s in shared], dtype=float) if shared else np.array([])
            row[f"{metric}_vs_{REFERENCE}"], row[f"{metric}_vs_low"], row[f"{metric}_vs_high"] = t_interval(diffs)
            row["paired_seeds"] = len(shared)
        rows.append(row)
    return rows


def summarize(output_dir: Path, results: Path, spec: dict, minutes: float | None, command: str) -> None:
    """Rewrite the tables and curves from every finished experiment under ``output_dir``."""
    from osal_ray.experiment.outputs import plot_curves

    main_rows, sweep_rows, frames = [], [], []
    for name in spec["settings"]:
        main = output_dir / name / "main" / "summary.json"
        if not main.is_file():
            continue
        runs = per_seed(json.loads(main.read_text()))
        reference = runs.get(REFERENCE)
        main_rows += table_rows(name, runs, reference)
        rounds = pd.read_parquet(main.with_name("rounds.parquet")).assign(setting=name, variant="main")
        frames.append(rounds)
        plot_curves(rounds, results / f"curves_{name}.png", title=f"Fashion-MNIST {name}: {spec['settings'][name]['description']}")
        variants = {float(path.parent.name.removeprefix("jsosal_a")): path
                    for path in (output_dir / name).glob("jsosal_a*/summary.json")}
        default = main_a_multiple(main.with_name("config.yaml"))
        if "jsosal" in runs and default is not None and default not in variants:
            variants[default] = main  # the main comparison's jsosal is the sweep's point at its own a
        for multiple, sweep in sorted(variants.items()):
            variant = per_seed(json.loads(sweep.read_text()))
            label = f"a={multiple:g}b"
            sweep_rows += table_rows(name, {"jsosal": variant["jsosal"]}, reference, rename={"jsosal": f"jsosal {label}"})
            if sweep != main:
                frames.append(pd.read_parquet(sweep.with_name("rounds.parquet")).assign(setting=name, variant=label))
    if not main_rows:
        print(f"nothing finished under {output_dir} yet")
        return
    results.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_parquet(results / "rounds.parquet", index=False)
    finished = sorted({row["setting"] for row in main_rows}, key=list(spec["settings"]).index)
    commands = [line for name in finished if (output_dir / name / COMMANDS_FILE).is_file()
                for line in (output_dir / name / COMMANDS_FILE).read_text().splitlines()]
    header = _header(spec, list(dict.fromkeys(commands)) or [command], minutes, finished)
    for rows, stem, title in ((main_rows, "table", "Open-set benchmark"), (sweep_rows, "sweep_a", "JSOSAL's a, swept")):
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        frame.to_csv(results / f"{stem}.csv", index=False)
        (results / f"{stem}.md").write_text(f"# {title}\n\n{header}\n\n{_markdown(frame)}\n")
    print((results / "table.md").read_text())


def _header(spec: dict, commands: list[str], minutes: float | None, finished: list[str]) -> str:
    settings = "\n".join(f"- `{name}`: {s['description']}" for name, s in spec["settings"].items() if name in finished)
    missing = [name for name in spec["settings"] if name not in finished]
    if missing:
        names = ", ".join(f"`{name}`" for name in missing)
        settings += f"\n\nNot run yet (no finished results): {names}."
    common = ", ".join(f"`{k}={v}`" for k, v in spec.get("common", {}).items())
    timing = f"; the last invocation took {minutes:.0f} min" if minutes is not None else ""
    return (
        f"Commands: {'; '.join(f'`{c}`' for c in commands)}. Base job `{spec['base']}` with {common}. Machine: {platform.node()} "
        f"{platform.machine()}, {_cpus()} CPUs{timing} (finished runs are resumed, not re-run).\n\n{settings}\n\n"
        f"Mean ± std over seeds; `vs {REFERENCE}`: the mean of the per-seed differences to {REFERENCE} on the same "
        "split, with its 95% t-interval over seeds."
    )


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _markdown(frame: pd.DataFrame) -> str:
    lines = [
        f"| setting | strategy | seeds | AUBC | final accuracy | final recall | mean precision | AUBC vs {REFERENCE} | recall vs {REFERENCE} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in frame.to_dict("records"):
        cells = [f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS]
        paired = [_interval(row[f"{m}_vs_{REFERENCE}"], row[f"{m}_vs_low"], row[f"{m}_vs_high"]) for m in PAIRED]
        lines.append(f"| {row['setting']} | {row['strategy']} | {row['seeds']} | " + " | ".join(cells + paired) + " |")
    return "\n".join(lines)


def _interval(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(low):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    spec = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(spec["settings"]), choices=list(spec["settings"]))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="*", default=list(ALL_STRATEGIES),
                        help="strategies of the main comparison (none: only the sweep)")
    parser.add_argument("--sweep-a", type=float, nargs="*", default=[], metavar="MULTIPLE",
                        help="also run JSOSAL with a = MULTIPLE x b, e.g. 1 1.5 2 3 4")
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "bench_open_set"))
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results" / "open_set"))
    parser.add_argument("--summarize", action="store_true", help="only rewrite the tables from finished runs")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.strategies and REFERENCE not in args.strategies:
        parser.error(f"the main comparison needs {REFERENCE} (the paired reference)")
    command = "python benchmarks/open_set.py " + " ".join(
        [f"--settings {' '.join(args.settings)}", f"--seeds {' '.join(map(str, args.seeds))}",
         f"--strategies {' '.join(args.strategies)}"]
        + ([f"--sweep-a {' '.join(f'{m:g}' for m in args.sweep_a)}"] if args.sweep_a else [])
        + [f"--set {o}" for o in args.overrides]
    )
    output_dir, results = Path(args.output_dir), Path(args.results_dir)
    if args.summarize:
        summarize(output_dir, results, spec, None, command)
        return

    from osal_ray.cluster import connect_ray
    from osal_ray.experiment import prepare_experiment, run_experiment

    runs = build_runs(args, spec)
    prepared = [prepare_experiment(run.config) for run in runs]  # every input check before Ray
    connect_ray(runs[0].config.ray)
    started = time.perf_counter()
    for setting in args.settings:  # the tables name the invocations behind each setting's runs
        record = output_dir / setting / COMMANDS_FILE
        record.parent.mkdir(parents=True, exist_ok=True)
        if command not in (record.read_text().splitlines() if record.is_file() else []):
            with record.open("a") as handle:
                handle.write(command + "\n")
    for run, experiment in zip(runs, prepared):
        print(f"\n=== {run.setting} {run.label or 'main'} ===", flush=True)
        run_experiment(experiment)
    summarize(output_dir, results, spec, (time.perf_counter() - started) / 60, command)


if __name__ == "__main__":
    main()
