"""An experiment: every strategy x seed trajectory on the same splits, and their outputs.

``prepare_experiment`` does everything that can fail on bad input (config, data, budget,
an output directory of another configuration) without Ray; ``run_experiment`` needs Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from osal_ray import storage
from osal_ray.config import ExperimentConfig, dump_config
from osal_ray.data import OpenSetSplit, SourceDataset, build_split, load_dataset, materialize_pool
from osal_ray.data.pool import PoolManifest
from osal_ray.errors import InputError
from osal_ray.experiment.oracle import Oracle
from osal_ray.experiment.outputs import plot_curves, rounds_frame, write_tables
from osal_ray.experiment.report import round_header, round_row, summary_table
from osal_ray.experiment.state import STATE_FILE, RoundRecord, RunState, atomic_write_text, open_run_state
from osal_ray.experiment.trajectory import RunContext, run_trajectory
from osal_ray.models import model_input
from osal_ray.scoring import stored_columns_for
from osal_ray.strategies import get_strategy
from osal_ray.validation import validate_config


@dataclass(frozen=True)
class PreparedSeed:
    """The materialised pool of one seed and the oracle that knows its labels."""

    seed: int
    manifest: PoolManifest
    oracle: Oracle


@dataclass
class PreparedExperiment:
    """A validated experiment whose data is on disk, ready for Ray."""

    config: ExperimentConfig
    output_dir: Path
    seeds: list[PreparedSeed]
    states: dict[tuple[str, int], RunState | None]


def run_location(storage_root: str, strategy: str, seed: int) -> str:
    """Where a run's state lives under the storage root (a directory or a URI)."""
    return storage.join(storage_root, "runs", strategy, f"seed_{seed}")


def check_splits(config: ExperimentConfig, source: SourceDataset) -> list[OpenSetSplit]:
    """Every seed's split of ``source``, each checked to hold the whole budget. Writes nothing."""
    splits = []
    for seed in config.seeds:
        split = build_split(config.data, source.train.labels, source.test.labels, source.class_names, seed)
        available = len(split.pool_ids) - len(split.initial_ids)
        needed = config.al.budget * config.al.rounds
        if needed > available:
            raise InputError(
                "al.budget",
                f"{config.al.rounds} rounds x {config.al.budget} = {needed} queries, but the pool has only "
                f"{available} unlabeled samples (seed {seed}); lower al.budget or al.rounds",
            )
        splits.append(split)
    return splits


def check_clip_weights(config: ExperimentConfig) -> None:
    """Where some strategy or network reads CLIP embeddings, the CLIPN weights must be reachable."""
    if "clip_embedding" in stored_columns_needed(config):
        from osal_ray.clip import check_clipn_weights

        clip = config.clip
        check_clipn_weights(clip.model_name, checkpoint=clip.checkpoint, pretrained=clip.pretrained,
                            model_config=clip.model_config, allow_download=clip.allow_download)


def prepare_experiment(config: ExperimentConfig, log: Callable[[str], None] = print) -> PreparedExperiment:
    """Validate, check resumability, build splits and write the Parquet pools. No Ray."""
    validate_config(config)
    output_dir = config.resolved_output_dir().resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("--output-dir", f"{output_dir} exists and is not a directory")
    states = {
        (strategy, seed): open_run_state(storage.join(run_location(config.resolved_storage(), strategy, seed), STATE_FILE), config, strategy, seed)
        for seed in config.seeds
        for strategy in config.strategies
    }
    source = load_dataset(config.data)
    splits = check_splits(config, source)
    check_clip_weights(config)
    prepared = []
    for seed, split in zip(config.seeds, splits):
        manifest = materialize_pool(source, split, output_dir / "data" / f"seed_{seed}", config.data.pool_files)
        prepared.append(PreparedSeed(seed, manifest, Oracle.from_pool(manifest)))
        known = ", ".join(manifest.known_class_names())
        log(
            f"seed {seed}: {config.data.dataset}, {config.data.protocol} protocol, known classes [{known}]; "
            f"pool {manifest.num_pool} ({prepared[-1].oracle.num_known} known), initial {manifest.num_initial}, "
            f"test {manifest.num_test}"
        )
    atomic_write_text(output_dir / "config.yaml", dump_config(config))
    return PreparedExperiment(config, output_dir, prepared, states)


def stored_columns_needed(config: ExperimentConfig, strategies: list[str] | None = None) -> set[str]:
    """Stored pool columns beyond the image that the networks' inputs or the strategies' scores read
    (``strategies``: those of the config by default)."""
    needed = {model_input(config.model.classifier)}
    if config.model.detector:
        needed.add(model_input(config.model.detector))
    for name in config.strategies if strategies is None else strategies:
        needed |= stored_columns_for(get_strategy(name).required_columns(config.strategy_params.get(name, {})))
    return needed - {"image"}


def with_stored_columns(config: ExperimentConfig, seed: PreparedSeed) -> PreparedSeed:
    """The seed's pool with the stored columns its runs need (the CLIP embedding pass, once per job)."""
    if "clip_embedding" not in stored_columns_needed(config):
        return seed
    from osal_ray.scoring.clip import ensure_clip_embeddings

    manifest = ensure_clip_embeddings(seed.manifest, config.clip, config.scoring, config.data.pool_files)
    return dataclasses.replace(seed, manifest=manifest)


def run_experiment(prepared: PreparedExperiment, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every trajectory (resuming finished rounds), keep outputs current, return the summary."""
    config, output_dir = prepared.config, prepared.output_dir
    states: dict[tuple[str, int], RunState] = {k: v for k, v in prepared.states.items() if v is not None}
    result: dict[str, Any] = {}

    def on_round(state: RunState, record: RoundRecord) -> None:
        nonlocal result
        states[(state.strategy, state.seed)] = state
        log(round_row(state.strategy, state.seed, record))
        result = write_tables(output_dir, list(states.values()))

    log(round_header())
    for prepared_seed in prepared.seeds:
        prepared_seed = with_stored_columns(config, prepared_seed)
        for name in config.strategies:
            context = RunContext(
                config=config,
                strategy=get_strategy(name),
                seed=prepared_seed.seed,
                manifest=prepared_seed.manifest,
                oracle=prepared_seed.oracle,
                run_location=run_location(config.resolved_storage(), name, prepared_seed.seed),
                checkpoint_location=storage.join(config.resolved_storage(), "checkpoints"),
                staging=output_dir / "staging",
                log=log,
                on_round=on_round,
            )
            states[(name, prepared_seed.seed)] = run_trajectory(context, prepared.states[(name, prepared_seed.seed)])
            plot_curves(rounds_frame(states.values()), output_dir / "curves.png", title=config.name)
    result = write_tables(output_dir, list(states.values()))
    log("")
    log(summary_table(result))
    log(f"\noutputs in {output_dir}: rounds.parquet, queries.parquet, summary.json, config.yaml, curves.png")
    return result
