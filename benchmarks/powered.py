"""Powered open-set benchmark: every strategy on frozen features, 20+ paired seeds, a truth-aware ceiling.

Cells are (setting, budget) pairs from ``benchmarks/powered_settings.yaml`` (``--settings-file``): the
base job plus common, setting and budget overrides. Every strategy of a cell runs on the same seeds
(a seed fixes the split, initial set, initialisations and data order), next to the truth-aware
references (a strategy restricted to the pool's true knowns, ``<strategy>@true_known``; a job's
config cannot name them). For every strategy the tables give AUBC, final recall, mean precision and
final accuracy; the share of the random-to-ceiling AUBC gap it closes; its paired difference to
random and to the best other method (mean, 95% t-interval, paired t and Wilcoxon p-values,
Holm-corrected over every pair of the cell); its significant wins and losses; the class balance of
the knowns it bought; its median selection time. The penalty matrix counts, per budget regime, in
how many settings each method is significantly better than each other one (Lüth et al., 2023).

Writes to ``benchmarks/results/powered/`` (``--results-dir``): ``table.md`` / ``table.csv`` (one row
per regime, setting, budget, strategy), ``pairs.csv`` (every pair of every cell), ``penalty_<budget>.png``
/ ``penalty.csv``, ``curves_<budget>.png`` (accuracy and recall vs labels, 95% bands over seeds) and
``rounds.parquet``. Runs resume: finished trajectories are kept, strategies and seeds can be added
later, and ``--summarize`` only rewrites the tables.

    python benchmarks/powered.py [--settings ...] [--budgets low high] [--seeds 0 ... 19] [--strategies ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from osal_ray.config import ExperimentConfig, load_config
from osal_ray.experiment.comparison import PairedDifference, class_balance, compare, gap_closed, penalty_matrix
from osal_ray.experiment.plan import StrategyPlan, TRUE_KNOWN_SUFFIX, plan_reference

REPO = Path(__file__).resolve().parents[1]
SETTINGS_FILE = Path(__file__).with_name("powered_settings.yaml")
METRICS = ("aubc", "final_recall", "mean_precision", "last_accuracy")
FLOOR = "random"
EXCLUDED = {"vlpure": "needs CLIP weights, which cannot be fetched here"}
COMMANDS_FILE = "commands.txt"


def every_strategy() -> list[str]:
    """Every registered strategy the benchmark can run here."""
    from osal_ray.strategies import STRATEGIES

    return [name for name in STRATEGIES.names() if name not in EXCLUDED]


def cell_config(spec: dict, setting: str, budget: str, seeds: list[int], strategies: list[str], output_dir: Path,
                overrides: list[str]) -> ExperimentConfig:
    """One cell's job, fully checked by ``load_config``."""
    values = {**spec.get("common", {}), **spec["settings"][setting]["set"], **spec["budgets"][budget]["set"]}
    dotted = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    listed = [f"seeds=[{', '.join(map(str, seeds))}]", f"strategies=[{', '.join(strategies)}]",
              f"output_dir={output_dir / setting / budget}", f"name=powered_{setting}_{budget}"]
    return load_config(str(REPO / spec["base"]), dotted + listed + overrides)


def cell_plans(config: ExperimentConfig, spec: dict) -> dict[str, StrategyPlan]:
    """The job's plans (checked) and the truth-aware references."""
    from osal_ray.experiment.preflight import check_config

    plans = check_config(config)
    for base in dict.fromkeys(spec.get("references", {}).values()):
        reference = plan_reference(config, base)
        plans[reference.name] = reference
    return plans


def reference_roles(spec: dict) -> dict[str, str]:
    """Reference plan name -> its role in the settings (e.g. ``badge@true_known`` -> ``ceiling``)."""
    return {f"{base}{TRUE_KNOWN_SUFFIX}": role for role, base in spec.get("references", {}).items()}


# ---- summary ---------------------------------------------------------------------------------------


def per_seed(summary: dict, metric: str, rounds: int) -> dict[str, dict[int, float]]:
    """strategy -> seed -> metric (NaN where missing) from a cell's summary.json, for the trajectories
    that finished all ``rounds`` (one that failed or was stopped on the way is left out)."""
    values = {s: {int(seed): (math.nan if run.get(metric) is None else float(run[metric]))
                  for seed, run in runs.items() if run.get("rounds") == rounds}
              for s, runs in summary["runs"].items()}
    return {s: v for s, v in values.items() if v}


def queried_balance(queries: pd.DataFrame) -> dict[str, float]:
    """Per strategy, the mean over seeds of the class balance of the knowns it queried."""
    known = queries[queries["known"]]
    result = {}
    for strategy, frame in known.groupby("strategy"):
        balances = [class_balance(seed_frame["label"].value_counts().to_numpy())
                    for _, seed_frame in frame.groupby("seed")]
        result[str(strategy)] = float(np.nanmean(balances)) if balances else math.nan
    return result


def cell_rows(regime: str, setting: str, budget: str, folder: Path, roles: dict[str, str],
              ) -> tuple[list[dict], list[dict], dict[tuple[str, str], PairedDifference], pd.DataFrame]:
    """A finished cell's table rows, its pairs, its AUBC comparisons (methods only) and its rounds."""
    summary = json.loads((folder / "summary.json").read_text())
    planned = int(yaml.safe_load((folder / "config.yaml").read_text())["al"]["rounds"])
    values = {metric: per_seed(summary, metric, planned) for metric in METRICS}
    rounds = pd.read_parquet(folder / "rounds.parquet")
    finished = {(s, seed) for s, seeds in values["aubc"].items() for seed in seeds}
    rounds = rounds[[key in finished for key in zip(rounds.strategy, rounds.seed)]]
    queries = pd.read_parquet(folder / "queries.parquet", columns=["strategy", "seed", "label", "known"])
    queries = queries[[key in finished for key in zip(queries.strategy, queries.seed)]]
    balance = queried_balance(queries)
    select_seconds = rounds[rounds["round"] > 0].groupby("strategy")["seconds_select"].median().to_dict()
    methods = [s for s in values["aubc"] if s not in roles]
    aubc = compare({s: values["aubc"][s] for s in methods})
    recall = compare({s: values["final_recall"][s] for s in methods})
    means = {s: float(np.nanmean(list(v.values()))) for s, v in values["aubc"].items()}
    ceiling = next((means[name] for name, role in roles.items() if role == "ceiling" and name in means), math.nan)
    floor = means.get(FLOOR, math.nan)
    rows = []
    for strategy in values["aubc"]:
        row: dict = {"regime": regime, "setting": setting, "budget": budget, "strategy": strategy,
                     "role": roles.get(strategy, "method"), "seeds": len(values["aubc"][strategy])}
        for metric in METRICS:
            seeds = np.array(list(values[metric][strategy].values()), dtype=float)
            row[metric] = float(np.nanmean(seeds)) if np.isfinite(seeds).any() else math.nan
            row[f"{metric}_std"] = float(np.nanstd(seeds, ddof=1)) if np.isfinite(seeds).sum() > 1 else math.nan
        row["gap_closed"] = gap_closed(row["aubc"], floor, ceiling)
        row["class_balance"] = balance.get(strategy, math.nan)
        row["select_seconds"] = float(select_seconds.get(strategy, math.nan))
        if strategy in methods:
            others = [s for s in methods if s != strategy]
            best = max(others, key=lambda s: means[s]) if others else None
            for label, pair in (("vs_random", aubc.get((strategy, FLOOR))), ("vs_best", aubc.get((strategy, best)) if best else None),
                                ("recall_vs_random", recall.get((strategy, FLOOR)))):
                _put_pair(row, label, pair)
            row["best_other"] = best
            signs = [aubc[(strategy, other)].significant() for other in others]
            row["significantly_better_than"] = sum(s > 0 for s in signs)
            row["significantly_worse_than"] = sum(s < 0 for s in signs)
        rows.append(row)
    pairs = [{"regime": regime, "setting": setting, "budget": budget, "metric": metric, **vars(pair)}
             for metric, table in (("aubc", aubc), ("final_recall", recall)) for (a, b), pair in table.items() if a < b]
    return rows, pairs, aubc, rounds.assign(setting=setting, budget=budget, regime=regime)


def _put_pair(row: dict, label: str, pair: PairedDifference | None) -> None:
    for field in ("mean", "low", "high", "t_p_holm", "wilcoxon_p_holm"):
        row[f"{label}_{field}"] = getattr(pair, field) if pair is not None else math.nan


def summarize(spec: dict, output_dir: Path, results: Path) -> None:
    """Rewrite every table and picture from the finished cells under ``output_dir``."""
    roles = reference_roles(spec)
    regime = spec.get("regime", "frozen")
    rows, pairs, frames, cells = [], [], [], {}
    for budget in spec["budgets"]:
        for setting in spec["settings"]:
            folder = output_dir / setting / budget
            if not (folder / "summary.json").is_file():
                continue
            cell, cell_pairs, aubc, rounds = cell_rows(regime, setting, budget, folder, roles)
            rows += cell
            pairs += cell_pairs
            frames.append(rounds)
            cells.setdefault(budget, []).append(aubc)
    if not rows:
        print(f"nothing finished under {output_dir} yet")
        return
    results.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(results / "table.csv", index=False)
    pd.DataFrame(pairs).to_csv(results / "pairs.csv", index=False)
    rounds = pd.concat(frames, ignore_index=True)
    rounds.to_parquet(results / "rounds.parquet", index=False)
    penalties = []
    for budget, budget_cells in cells.items():
        names = sorted({a for cell in budget_cells for a, _ in cell}, key=lambda s: -table[(table.budget == budget) & (table.strategy == s)].aubc.mean())
        matrix = penalty_matrix(budget_cells, names)
        penalties.append(pd.DataFrame(matrix, index=names, columns=names).rename_axis("better").reset_index().assign(budget=budget, cells=len(budget_cells)))
        plot_penalty(matrix, names, len(budget_cells), results / f"penalty_{budget}.png", f"{regime}, budget {budget}")
        plot_curves(rounds[rounds.budget == budget], list(spec["settings"]), results / f"curves_{budget}.png", roles)
    pd.concat(penalties, ignore_index=True).to_csv(results / "penalty.csv", index=False)
    (results / "table.md").write_text(markdown(spec, table, output_dir))
    (results / "headline.md").write_text(headline(table))
    print((results / "table.md").read_text())


def markdown(spec: dict, table: pd.DataFrame, output_dir: Path) -> str:
    commands = sorted({line for path in output_dir.glob(f"*/*/{COMMANDS_FILE}") for line in path.read_text().splitlines()})
    lines = [f"# Powered open-set benchmark ({spec.get('regime', 'frozen')} regime)", "",
             f"Commands: {'; '.join(f'`{c}`' for c in commands)}. Machine: {platform.machine()}, {_cpus()} CPUs. "
             f"Base job `{spec['base']}` with " + ", ".join(f"`{k}={v}`" for k, v in spec.get("common", {}).items()) + ".", "",
             "Settings:", *[f"- `{n}`: {s['description']}" for n, s in spec["settings"].items()], "",
             "Budgets:", *[f"- `{n}`: {b['description']}" for n, b in spec["budgets"].items()], "",
             "References (truth-aware, benchmark-only): " + ", ".join(f"`{role}` = `{base}{TRUE_KNOWN_SUFFIX}`"
                                                                    for role, base in spec.get("references", {}).items()) + ".", "",
             "Columns: mean over seeds; `gap` = (AUBC - random's) / (ceiling's - random's); `vs random`, `vs best`: mean paired "
             "AUBC difference [95% t-interval], with the Holm-corrected paired t-test's p (Wilcoxon's in table.csv); "
             "`+/-`: how many other methods it is significantly better / worse than (Holm-corrected t, 0.05); `balance`: "
             "normalised entropy of the classes of the knowns it bought (1 = even); `select`: median seconds per selection.", ""]
    for (budget, setting), cell in table.groupby(["budget", "setting"], sort=False):
        lines += [f"## {setting}, budget {budget}", "",
                  "| strategy | seeds | AUBC | final recall | mean precision | final acc. | gap | vs random | vs best | +/- | balance | select |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |"]
        for row in cell.sort_values("aubc", ascending=False).to_dict("records"):
            method = row["role"] == "method"
            name = row["strategy"] if method else f"*{row['strategy']}* ({row['role']})"
            lines.append(
                f"| {name} | {row['seeds']} | {row['aubc']:.4f} ± {row['aubc_std']:.4f} | {row['final_recall']:.3f} | "
                f"{row['mean_precision']:.3f} | {row['last_accuracy']:.3f} | {_num(row['gap_closed'], '.2f')} | "
                + (f"{_pair(row, 'vs_random')} | {_pair(row, 'vs_best')} vs {row['best_other']} | "
                   f"+{int(row['significantly_better_than'])}/-{int(row['significantly_worse_than'])} | " if method else "- | - | - | ")
                + f"{_num(row['class_balance'], '.3f')} | {_num(row['select_seconds'], '.3f')} |")
        lines.append("")
    return "\n".join(lines)


def headline(table: pd.DataFrame) -> str:
    """One row per cell: the ceiling, the floor, the three best methods by AUBC (gap closed, paired
    difference to random, Holm-corrected p) and the method with the highest final recall."""
    lines = ["| setting | budget | ceiling | random | best three methods: AUBC (gap closed; vs random [95% CI], Holm p) | most knowns: final recall (AUBC) |",
             "| --- | --- | ---: | ---: | --- | --- |"]
    for (budget, setting), cell in table.groupby(["budget", "setting"], sort=False):
        methods = cell[cell.role == "method"].sort_values("aubc", ascending=False)
        ceiling = cell[cell.role == "ceiling"].aubc
        floor = cell[cell.strategy == FLOOR].aubc
        best = "; ".join(
            f"{r['strategy']} {r['aubc']:.4f} ({_num(r['gap_closed'], '+.2f')}; " + (_pair(r, 'vs_random') if r['strategy'] != FLOOR else "floor") + ")"
            for r in methods.head(3).to_dict("records"))
        most = methods.sort_values("final_recall", ascending=False).iloc[0]
        lines.append(f"| {setting} | {budget} | {_num(float(ceiling.iloc[0]) if len(ceiling) else math.nan, '.4f')} | "
                     f"{_num(float(floor.iloc[0]) if len(floor) else math.nan, '.4f')} | {best} | "
                     f"{most['strategy']} {most['final_recall']:.3f} ({most['aubc']:.4f}) |")
    return "\n".join(lines) + "\n"


def _pair(row: dict, label: str) -> str:
    mean = row[f"{label}_mean"]
    if not math.isfinite(mean):
        return "-"
    return (f"{mean:+.4f} [{row[f'{label}_low']:+.4f}, {row[f'{label}_high']:+.4f}] "
            f"p={row[f'{label}_t_p_holm']:.2g}")


def _num(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def plot_penalty(matrix: np.ndarray, names: list[str], cells: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 0.45 * len(names) + 2
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Reds", vmin=0, vmax=max(cells, 1))
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("worse")
    ax.set_ylabel("significantly better (row) in how many settings")
    ax.set_title(f"Penalty matrix, {title} ({cells} settings)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(rounds: pd.DataFrame, settings: list[str], path: Path, roles: dict[str, str]) -> None:
    """Accuracy and recall against labels bought, mean and 95% band over seeds, one column per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    present = [s for s in settings if s in set(rounds.setting)]
    fig, axes = plt.subplots(2, len(present), figsize=(4.5 * len(present), 8), squeeze=False)
    strategies = sorted(set(rounds.strategy))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(strategies), 2)))
    for column, setting in enumerate(present):
        frame = rounds[rounds.setting == setting]
        for metric, ax in zip(("accuracy", "recall"), axes[:, column]):
            for colour, strategy in zip(colours, strategies):
                grouped = frame[frame.strategy == strategy].groupby("budget_spent")[metric]
                mean, sem, count = grouped.mean(), grouped.sem(), grouped.count()
                half = sem * stats.t.ppf(0.975, np.maximum(count - 1, 1))
                style = "--" if strategy in roles else "-"
                ax.plot(mean.index, mean.values, style, color=colour, label=strategy, linewidth=1.2)
                ax.fill_between(mean.index, (mean - half).values, (mean + half).values, color=colour, alpha=0.15)
            ax.set_title(f"{setting}: {metric}")
            ax.set_xlabel("labels bought")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- running ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings-file", default=str(SETTINGS_FILE))
    parser.add_argument("--settings", nargs="+", help="default: every setting of the file")
    parser.add_argument("--budgets", nargs="+", help="default: every budget of the file")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    parser.add_argument("--strategies", nargs="+", help=f"default: every registered one but {', '.join(EXCLUDED)}")
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "bench_powered"))
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results" / "powered"))
    parser.add_argument("--summarize", action="store_true", help="only rewrite the tables from finished runs")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.settings_file).read_text())
    output_dir, results = Path(args.output_dir), Path(args.results_dir)
    if args.summarize:
        summarize(spec, output_dir, results)
        return
    settings = args.settings or list(spec["settings"])
    budgets = args.budgets or list(spec["budgets"])
    for name, known in (("--settings", spec["settings"]), ("--budgets", spec["budgets"])):
        unknown = [n for n in (settings if name == "--settings" else budgets) if n not in known]
        if unknown:
            parser.error(f"{name}: {unknown} not in {args.settings_file} (have {list(known)})")
    strategies = args.strategies or every_strategy()
    if FLOOR not in strategies:
        parser.error(f"--strategies needs {FLOOR} (the floor every method is paired against)")
    command = ("python benchmarks/powered.py" + (f" --settings-file {args.settings_file}" if args.settings_file != str(SETTINGS_FILE) else "")
               + f" --settings {' '.join(settings)} --budgets {' '.join(budgets)} --seeds {' '.join(map(str, args.seeds))}"
               + f" --strategies {' '.join(strategies)}" + "".join(f" --set {o}" for o in args.overrides))

    from osal_ray.cluster import connect_ray
    from osal_ray.experiment import prepare_experiment, run_experiment

    cells = [(s, b, cell_config(spec, s, b, args.seeds, strategies, output_dir, args.overrides)) for b in budgets for s in settings]
    prepared = [prepare_experiment(config, plans=cell_plans(config, spec)) for _, _, config in cells]  # every check before Ray
    connect_ray(cells[0][2].ray)
    for (setting, budget, config), experiment in zip(cells, prepared):
        record = Path(config.resolved_output_dir()) / COMMANDS_FILE
        if command not in (record.read_text().splitlines() if record.is_file() else []):
            with record.open("a") as handle:
                handle.write(command + "\n")
        started = time.perf_counter()
        print(f"\n=== {setting}, budget {budget} ===", flush=True)
        run_experiment(experiment)
        with (Path(config.resolved_output_dir()) / "minutes.txt").open("a") as handle:
            handle.write(f"{(time.perf_counter() - started) / 60:.2f}\n")
        summarize(spec, output_dir, results)


if __name__ == "__main__":
    main()
