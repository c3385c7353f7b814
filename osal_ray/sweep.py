"""Sweeps with Ray Tune: every trial is a full active-learning experiment of a config variant.

A job with a non-empty ``sweep.space`` is a sweep. The Tune trial is a small driver function
that prepares and runs the experiment (its networks train with Ray Train's TorchTrainer and its
pool is scored by Ray Data, as Ray's Train-inside-Tune pattern has it) and reports the summary
metric. Outputs (under ``<output_dir>/sweep/``): ``trials.parquet`` and ``trials.csv`` (swept
values + summary metrics per trial), ``best_config.yaml``, ``objective.png``; each trial's own
outputs in the foundation's format under ``<output_dir>/trials/<trial key>/``. Running the
same command again restores the Tune experiment and resumes unfinished trials, whose own runs
resume after their last finished round.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from osal_ray import storage
from osal_ray.config import ExperimentConfig, config_from_dict, dump_config, set_dotted
from osal_ray.errors import InputError
from osal_ray.experiment.outputs import SUMMARY_METRICS

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SHORTHANDS = {"seed": "seeds", "strategy": "strategies"}


def is_sweep(config: ExperimentConfig) -> bool:
    return bool(config.sweep.space)


def apply_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with the trial's values set (``seed``/``strategy`` become one-element lists)."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        if key in SHORTHANDS:
            raw[SHORTHANDS[key]] = [value]
        else:
            set_dotted(raw, key, value)
    return raw


def trial_key(values: dict[str, Any]) -> str:
    """A stable name for a trial's values: the same values always land in the same directory."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _representatives(key: str, spec: Any) -> list[Any]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise InputError(f"sweep.space.{key}", f"expected one of {{{', '.join(k + ': ...' for k in KINDS)}}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise InputError(f"sweep.space.{key}", f"{kind} needs a non-empty list of values")
        return list(args)
    if not isinstance(args, list) or len(args) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args):
        raise InputError(f"sweep.space.{key}", f"{kind} needs [low, high]")
    low, high = args
    if not low < high or (kind == "loguniform" and low <= 0):
        raise InputError(f"sweep.space.{key}", f"{kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}")
    if kind == "randint":
        if not all(isinstance(v, int) for v in args):
            raise InputError(f"sweep.space.{key}", "randint needs integer bounds")
        return [low, high - 1]
    return [low, high]


def validate_sweep(config: ExperimentConfig) -> None:
    """The sweep's settings, and every swept key and value: each must make a valid config (values
    and strategy plans, ``preflight.check_config``); checked before Ray."""
    from osal_ray.experiment.preflight import check_config

    _check_sweep_settings(config)
    _check_each_variant(config, check_config)


def _check_sweep_settings(config: ExperimentConfig) -> None:
    """The optuna extra where it searches, and the shape of every swept key's values (the search's own
    keys check themselves: ``SweepConfig.check``)."""
    sweep = config.sweep
    if sweep.searcher == "optuna":
        from osal_ray.extras import require_extra

        require_extra("optuna", "sweep.searcher", "the optuna searcher")
    for key, spec in sweep.space.items():
        _representatives(key, spec)
        if sweep.searcher == "optuna" and "grid" in spec:
            raise InputError(f"sweep.space.{key}", "the optuna searcher samples; use choice instead of grid")
    if sweep.metric_strategy is not None:
        if "strategy" in sweep.space:
            raise InputError("sweep.metric_strategy", "with strategy swept, each trial runs one strategy and is scored "
                                                      "on it; leave metric_strategy unset")
        if sweep.metric_strategy not in config.strategies:
            raise InputError("sweep.metric_strategy", f"{sweep.metric_strategy!r} is not among the strategies {config.strategies}")


def check_sweep(config: ExperimentConfig) -> None:
    """Everything a sweep can be refused for, before Ray (``preflight``, once each): the base config,
    the search space, the resume of a saved sweep, then for the base config and every swept value
    the plans, data, splits, budget, annotator and CLIP weights its trials need."""
    from osal_ray.experiment.preflight import check_config, check_data, check_experiment

    plans = check_config(config)
    _check_sweep_settings(config)
    check_sweep_resume(config)
    sources: dict[str, Any] = {}
    check_data(config, plans, sources)
    _check_each_variant(config, lambda variant: check_experiment(variant, sources))


def variant_config(base: dict[str, Any], values: dict[str, Any]) -> ExperimentConfig:
    """The experiment of one trial: the config dict ``base`` with the swept ``values`` set, no sweep."""
    return config_from_dict(apply_values({**base, "sweep": {}}, values))


def _check_each_variant(config: ExperimentConfig, check: Callable[[ExperimentConfig], None]) -> None:
    """``check`` the variant of every representative value of every swept key (the ends of a range)."""
    base = config.to_dict()
    for key, spec in config.sweep.space.items():
        for value in _representatives(key, spec):
            try:
                check(variant_config(base, {key: value}))
            except InputError as exc:
                raise InputError(f"sweep.space.{key}", f"value {value!r}: {exc}") from None


def _sweep_definition(config: ExperimentConfig) -> dict[str, Any]:
    sweep = config.to_dict()["sweep"]
    return {k: sweep[k] for k in ("space", "searcher", "num_samples", "metric", "metric_strategy", "seed", "scheduler",
                                  "grace_period", "reduction_factor")}


def _definition_location(config: ExperimentConfig) -> str:
    return storage.join(config.resolved_storage(), "tune", "sweep_definition.json")


def check_sweep_resume(config: ExperimentConfig) -> None:
    """A sweep resumes only with the search it started with (Tune keeps the old space on restore)."""
    from osal_ray.experiment.state import describe_difference

    location = _definition_location(config)
    if not storage.exists(location):
        return
    saved = storage.read_json(location, dict, "sweep definition", "move the sweep's output directory away to start over")
    differences = describe_difference(saved, json.loads(json.dumps(_sweep_definition(config))), "sweep.")
    if differences:
        raise InputError("--output-dir", f"{location} belongs to a sweep with another search: {'; '.join(differences[:5])}. "
                                         "Use another --output-dir, or delete it to start over")


def _tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    makers: dict[str, Callable[[Any], Any]] = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: makers[kind](args) for key, spec in space.items() for kind, args in spec.items()}


def _absolute_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """Trials run in their own working directories (Tune's): make the config's local paths absolute.

    ``clip.pretrained`` is a path only when such a file exists; otherwise it is an open_clip tag.
    """
    raw = copy.deepcopy(raw)
    for section, key in (("data", "root"), ("clip", "checkpoint"), ("clip", "pretrained"), (None, "storage_path"), (None, "output_dir")):
        holder = raw if section is None else raw[section]
        value = holder[key]
        if not value or storage.is_uri(value) or (key == "pretrained" and not Path(value).exists()):
            continue
        holder[key] = str(Path(value).resolve())
    return raw


def sweep_trial(values: dict[str, Any], base: dict[str, Any], trials_root: str, storage_root: str | None,
                metric: str, metric_strategy: str | None) -> None:
    """One Tune trial: run the experiment of ``base`` with ``values`` and report its objective."""
    import ray
    from ray import tune

    from osal_ray.cluster import configure_ray_data
    from osal_ray.experiment import prepare_experiment, run_experiment

    configure_ray_data()
    key = trial_key(values)
    output_dir = str(Path(trials_root) / key)
    storage_path = storage.join(storage_root, "trials", key) if storage_root else None
    config = variant_config({**base, "output_dir": output_dir, "storage_path": storage_path}, values)
    identity = {"node_id": ray.get_runtime_context().get_node_id(), "trial_key": key, "trial_output_dir": output_dir}

    def report(summary: dict[str, Any], done: bool) -> None:
        metrics = {**identity, **objective_metrics(summary, metric, metric_strategy), "finished": done}
        tune.report(metrics)

    # Every finished round reports the running summary (AUBC so far...), so a scheduler such as ASHA
    # can stop a weak trial early; the last report is the trial's result.
    summary = run_experiment(prepare_experiment(config), on_round=lambda summary: report(summary, False))
    report(summary, True)


def objective_metrics(summary: dict[str, Any], metric: str, metric_strategy: str | None) -> dict[str, float]:
    """The summary metrics of a trial (of ``metric_strategy``, or the mean over its strategies) and its objective."""
    metrics = {}
    for name in SUMMARY_METRICS:
        means = summary["mean"]
        chosen = [means.get(metric_strategy, {}).get(name)] if metric_strategy else [m[name] for m in means.values()]
        chosen = [v for v in chosen if v is not None]
        metrics[name] = float(np.mean(chosen)) if chosen else math.nan
    metrics["objective"] = metrics[metric]
    return metrics


def run_sweep(config: ExperimentConfig, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run (or resume) the sweep; write the trials table, the best config and the plot; return the table."""
    import functools

    from ray import tune

    sweep = config.sweep
    check_sweep_resume(config)
    output_dir = config.resolved_output_dir().resolve()
    base = _absolute_paths({**config.to_dict(), "output_dir": str(output_dir)})
    storage_root = base["storage_path"]
    trainable = tune.with_resources(
        functools.partial(
            _trial_entry, base=base, trials_root=str(output_dir / "trials"), storage_root=storage_root,
            metric=sweep.metric, metric_strategy=sweep.metric_strategy,
        ),
        dict(sweep.trial_resources),
    )
    tune_root = storage.ray_storage_path(storage.join(config.resolved_storage(), "tune"))
    experiment = storage.join(tune_root, "sweep")
    if tune.Tuner.can_restore(experiment):
        log(f"resuming the sweep in {experiment}")
        # Errored trials start again (their own runs resume after the last finished round).
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True)
    else:
        storage.write_bytes(_definition_location(config), json.dumps(_sweep_definition(config), sort_keys=True).encode())
        search_alg = None
        if sweep.searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=sweep.seed)
        elif sweep.searcher == "random":
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=sweep.seed)
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_space(sweep.space),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", search_alg=search_alg, num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials, scheduler=_scheduler(config),
            ),
            run_config=tune.RunConfig(name="sweep", storage_path=tune_root, verbose=0),
        )
    results = tuner.fit()
    table = _trials_table(results, list(sweep.space))
    _write_outputs(config, table, output_dir / "sweep", log)
    return table


def _scheduler(config: ExperimentConfig):
    """ASHA stops trials whose running objective trails the others' at the same round (``sweep.scheduler``)."""
    if config.sweep.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    reports = config.al.rounds + 1  # rounds per trajectory, round 0 included
    trajectories = len(config.seeds) * (1 if "strategy" in config.sweep.space else len(config.strategies))
    return ASHAScheduler(time_attr="training_iteration", max_t=reports * trajectories + 1,
                         grace_period=config.sweep.grace_period, reduction_factor=config.sweep.reduction_factor)


def _trial_entry(values: dict[str, Any], **kwargs: Any) -> None:
    sweep_trial(values, **kwargs)


def _trials_table(results: Any, keys: list[str]) -> pd.DataFrame:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row: dict[str, Any] = {key: result.config.get(key) for key in keys}
        row.update({name: metrics.get(name, math.nan) for name in (*SUMMARY_METRICS, "objective")})
        row["node_id"] = metrics.get("node_id")
        row["trial_key"] = metrics.get("trial_key", trial_key({k: result.config.get(k) for k in keys}))
        row["status"] = "error" if result.error else ("ok" if metrics.get("finished", True) else "stopped early")
        row["error"] = str(result.error).splitlines()[0][:300] if result.error else None
        rows.append(row)
    return pd.DataFrame(rows).sort_values("objective", ascending=False, na_position="last").reset_index(drop=True)


def _write_outputs(config: ExperimentConfig, table: pd.DataFrame, folder: Path, log: Callable[[str], None]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stored = table.copy()
    for key in config.sweep.space:
        stored[key] = stored[key].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    storage.write_file(folder / "trials.parquet", lambda tmp: stored.to_parquet(tmp, index=False))
    storage.write_file(folder / "trials.csv", lambda tmp: stored.to_csv(tmp, index=False))
    ok = table[table["status"] == "ok"]
    if len(ok):
        best = ok.iloc[0]
        values = {key: best[key] for key in config.sweep.space}
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
        best_config = variant_config(config.to_dict(), values)
        storage.write_bytes(folder / "best_config.yaml", (
            f"# best of {len(ok)} finished trials by {config.sweep.metric} = {best['objective']:.4f}\n" + dump_config(best_config)
        ).encode())
    _plot(table, list(config.sweep.space), config.sweep.metric, folder / "objective.png")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log(table.drop(columns=["error"]).to_string(index=False))
    log(f"\nsweep outputs in {folder}: trials.parquet, trials.csv, best_config.yaml, objective.png")


def _plot(table: pd.DataFrame, keys: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    ok = table[table["status"] == "ok"]
    for ax, key in zip(axes[0], keys):
        values = ok[key].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
        if pd.api.types.is_numeric_dtype(values):
            ax.scatter(values, ok["objective"])
        else:
            labels = sorted(values.astype(str).unique())
            positions = values.astype(str).map({label: i for i, label in enumerate(labels)})
            ax.scatter(positions, ok["objective"])
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    storage.write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
