"""Everything a job can be refused for, checked before Ray starts and before anything is written.

``run.py`` (through ``prepare_experiment``) and ``sweep.py`` (for the base config and every swept
value) call these, and only these:

- ``check_config``: the config's values (``osal_ray.validation``) and each strategy's plan
  (typed parameters, columns, network recipes);
- ``check_data``: the dataset loads, every seed's split holds the whole budget, a simulated
  annotator has the truth, CLIP weights are reachable where a plan reads CLIP embeddings;
- ``check_resume``: saved runs in the output directory were made with these settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from osal_ray import storage
from osal_ray.annotation import annotator_backend
from osal_ray.config import ExperimentConfig
from osal_ray.data import ImagePoolSource, OpenSetSplit, SourceDataset, build_split, load_dataset
from osal_ray.data.pool import MANIFEST, read_catalog, read_manifest
from osal_ray.errors import InputError
from osal_ray.experiment.plan import StrategyPlan, clip_embeddings_needed, features_needed, plan_experiment, plan_strategy
from osal_ray.experiment.state import STATE_FILE, RunState, open_run_state, saved_trajectories
from osal_ray.validation import validate_config


@dataclass(frozen=True)
class CheckedData:
    """The loaded source (an image pool: listed, not decoded) and every seed's split."""

    source: SourceDataset | ImagePoolSource
    splits: list[OpenSetSplit]


def check_config(config: ExperimentConfig) -> dict[str, StrategyPlan]:
    """Validate ``config`` and plan its strategies (InputError naming the dotted key otherwise)."""
    validate_config(config)
    return plan_experiment(config)


def check_data(config: ExperimentConfig, plans: dict[str, StrategyPlan],
               sources: dict[str, Any] | None = None,
               states: Mapping[tuple[str, int], RunState | None] | None = None) -> CheckedData:
    """Load the data (``sources`` caches it by data config across a sweep's variants), check the
    splits and budget (against what the saved ``states`` queried already), the annotator and the
    CLIP weights. Writes nothing."""
    key = repr(sorted(config.to_dict()["data"].items()))
    if sources is not None and key in sources:
        source = sources[key]
    else:
        source = load_dataset(config.data)
        if sources is not None:
            sources[key] = source
    splits = check_splits(config, source, states)
    backend = annotator_backend(config)
    backend.check(config, source)
    references = [name for name, plan in plans.items() if plan.candidates == "true_known"]
    if references and backend.human:
        raise InputError("oracle.kind", f"{', '.join(references)} select among the true knowns, which only a simulated "
                                        f"annotator knows; oracle.kind {backend.name!r} has people label")
    check_clip_weights(config, plans)
    if features_needed(plans):
        from osal_ray.features import extractor_params

        extractor, params = extractor_params(config)
        extractor.check(params, config)
    return CheckedData(source, splits)


def check_experiment(config: ExperimentConfig, sources: dict[str, Any] | None = None) -> dict[str, StrategyPlan]:
    """``check_config`` then ``check_data``; the plans."""
    plans = check_config(config)
    check_data(config, plans, sources)
    return plans


def run_location(storage_root: str, strategy: str, seed: int) -> str:
    """Where a run's state lives under the storage root (a directory or a URI)."""
    return storage.join(storage_root, "runs", strategy, f"seed_{seed}")


def check_resume(config: ExperimentConfig, plans: dict[str, StrategyPlan]) -> dict[tuple[str, int], RunState | None]:
    """The saved state of every (strategy, seed) of the job (None where there is none), each made
    with the job's settings; trajectories the job does not name stay in the directory's tables, so
    they must share its data, budget, model, training and detector."""
    root = config.resolved_storage()
    states = {
        (name, seed): open_run_state(storage.join(run_location(root, name, seed), STATE_FILE), config, plan, seed)
        for seed in config.seeds
        for name, plan in plans.items()
    }
    for name, seed in saved_trajectories(root):
        if (name, seed) not in states:
            states[(name, seed)] = open_run_state(storage.join(run_location(root, name, seed), STATE_FILE), config,
                                                  plan_strategy(config, name), seed, shared_only=True)
    return states


def check_splits(config: ExperimentConfig, source: SourceDataset | ImagePoolSource,
                 states: Mapping[tuple[str, int], RunState | None] | None = None) -> list[OpenSetSplit]:
    """Every seed's split of ``source``, each checked to hold the whole budget. Writes nothing.

    An image pool has no split (its folders are the split); its budget is checked against the
    unlabeled files listed plus the images a saved run queried whose files are gone since (they
    stay in its pool; decoding may still find some files unreadable).
    """
    needed = config.al.budget * config.al.rounds
    if isinstance(source, ImagePoolSource):
        available = image_pool_candidates(config, source, states or {})
        if needed > available:
            raise InputError("al.budget", f"{config.al.rounds} rounds x {config.al.budget} = {needed} queries, but "
                                          f"{source.root / 'unlabeled'} holds only {available} files (with those already "
                                          "queried); lower al.budget or al.rounds")
        return []
    splits = []
    for seed in config.seeds:
        split = build_split(config.data, source.train.labels, source.test.labels, source.class_names, seed)
        available = len(split.pool_ids) - len(split.initial_ids)
        if needed > available:
            raise InputError(
                "al.budget",
                f"{config.al.rounds} rounds x {config.al.budget} = {needed} queries, but the pool has only "
                f"{available} unlabeled samples (seed {seed}); lower al.budget or al.rounds",
            )
        splits.append(split)
    return splits


def image_pool_candidates(config: ExperimentConfig, source: ImagePoolSource,
                          states: Mapping[tuple[str, int], RunState | None]) -> int:
    """What the least advanced saved run can query in all: the unlabeled files listed, plus the samples
    it queried whose files were deleted since (a deleted image keeps its label and its place in the pool)."""
    on_disk = {e.path for e in source.entries if e.role == "unlabeled"}
    queried = [state.queried_ids() for state in states.values() if state is not None]
    pool = config.resolved_output_dir().resolve() / "data" / "pool"
    if not any(len(ids) for ids in queried) or not (pool / MANIFEST).is_file():
        return len(on_disk)
    catalog = read_catalog(read_manifest(pool))
    return len(on_disk) + min(sum(catalog.get(int(i), (None, None))[1] not in on_disk for i in ids) for ids in queried)


def check_clip_weights(config: ExperimentConfig, plans: dict[str, StrategyPlan]) -> None:
    """Where some strategy or network reads CLIP embeddings, the CLIPN weights must be reachable."""
    if not clip_embeddings_needed(plans):
        return
    from osal_ray.extras import require_extra

    require_extra("open_clip", "strategies", "a CLIP score (VLPure-AL, or purity in mqnet/osal)")
    from osal_ray.clip import check_clipn_weights

    clip = config.clip
    check_clipn_weights(clip.model_name, checkpoint=clip.checkpoint, pretrained=clip.pretrained,
                        model_config=clip.model_config, allow_download=clip.allow_download)
