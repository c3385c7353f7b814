"""An experiment: every strategy x seed trajectory on the same splits, and their outputs.

``prepare_experiment`` does everything that can fail on bad input (config, data, budget,
an output directory of another configuration) without Ray; ``run_experiment`` needs Ray.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from osal_ray import storage
from osal_ray.config import ExperimentConfig, dump_config
from osal_ray.data import ImagePoolSource, SourceDataset, materialize_pool
from osal_ray.data.pool import PoolManifest
from osal_ray.errors import InputError
from osal_ray.experiment.concurrent import cluster_cpus, concurrency_limit, describe_error, run_concurrently
from osal_ray.annotation import AnnotatorSetup, annotator_backend
from osal_ray.annotation.contract import Annotator, QueryRequest
from osal_ray.experiment.outputs import plot_curves, rounds_frame, write_tables
from osal_ray.experiment.plan import StrategyPlan, clip_embeddings_needed, features_needed
from osal_ray.experiment.preflight import check_config, check_data, check_resume, run_location
from osal_ray.experiment.report import round_header, round_row, summary_table
from osal_ray.experiment.state import RoundRecord, RunState, atomic_write_text, resumed_plan
from osal_ray.experiment.trajectory import TrajectoryJob, run_trajectory
from osal_ray.lock import OutputLock
from osal_ray.scoring.resident import ModeDecision, release_resident_scorers, use_resident
from osal_ray.training.fit import _in_tune_trial as in_tune_trial


@dataclass(frozen=True)
class PreparedSeed:
    """The materialised pool of one seed and the annotator that labels its queries."""

    seed: int
    manifest: PoolManifest
    annotator: Annotator


@dataclass
class PreparedExperiment:
    """A validated experiment whose data is on disk (an ``image_pool`` is decoded once Ray runs)."""

    config: ExperimentConfig
    plans: dict[str, StrategyPlan]
    output_dir: Path
    seeds: list[PreparedSeed]
    states: dict[tuple[str, int], RunState | None]
    lock: OutputLock | None = None
    image_pool: ImagePoolSource | None = None
    waiting: str | None = None  # a human round still lacks labels: nothing to do (the message says what)
    served: bool = False  # run by the service, which continues by itself once a round is labeled


def prepare_experiment(config: ExperimentConfig, log: Callable[[str], None] = print,
                       plans: dict[str, StrategyPlan] | None = None) -> PreparedExperiment:
    """Check everything (``preflight``), lock the output directory, build splits and write the pools.

    No Ray: an ``image_pool`` is only listed and checked here (``run_experiment`` decodes it).
    ``plans``: the config's checked plans (``check_config``), when a caller that runs many rounds of one
    config (the service) made them once already.
    """
    plans = check_config(config) if plans is None else plans
    output_dir = config.resolved_output_dir().resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("--output-dir", f"{output_dir} exists and is not a directory")
    lock = OutputLock.acquire(output_dir)
    try:
        return _prepare(config, plans, output_dir, lock, log)
    except BaseException:
        lock.release()
        raise


def _prepare(config: ExperimentConfig, plans: dict[str, StrategyPlan], output_dir: Path, lock: OutputLock,
             log: Callable[[str], None]) -> PreparedExperiment:
    states = check_resume(config, plans)
    backend = annotator_backend(config)
    if backend.human:
        backend.before_run(output_dir, config, log)
        waiting = _incomplete_round(output_dir, config)
        if waiting is not None:
            return PreparedExperiment(config, plans, output_dir, [], states, lock, waiting=waiting)
    checked = check_data(config, plans, states=states)
    source, splits = checked.source, checked.splits
    prepared = []
    if isinstance(source, SourceDataset):
        manifests = [materialize_pool(source, split, output_dir / "data" / f"seed_{seed}", config.data.pool_files)
                     for seed, split in zip(config.seeds, splits)]
        annotators = backend.create(AnnotatorSetup(config, output_dir, manifests, log))
        for seed, manifest, annotator in zip(config.seeds, manifests, annotators):
            prepared.append(PreparedSeed(seed, manifest, annotator))
            known = ", ".join(manifest.known_class_names())
            counted = f" ({annotator.num_known} known)" if annotator.num_known is not None else ""
            log(
                f"seed {seed}: {config.data.dataset}, {config.data.protocol} protocol, known classes [{known}]; "
                f"pool {manifest.num_pool}{counted}, initial {manifest.num_initial}, test {manifest.num_test}"
            )
    else:
        log(f"image_pool {source.root}: known classes [{', '.join(source.class_names)}], unknown label "
            f"{source.unknown_label!r}; {len(source.entries)} files listed")
    atomic_write_text(output_dir / "config.yaml", dump_config(config))
    return PreparedExperiment(config, plans, output_dir, prepared, states, lock,
                              source if isinstance(source, ImagePoolSource) else None)


def with_stored_columns(config: ExperimentConfig, plans: dict[str, StrategyPlan], seed: PreparedSeed,
                        log: Callable[[str], None] | None = None) -> PreparedSeed:
    """The seed's pool with the stored columns its runs need: CLIP embeddings and frozen features (each
    computed once per job on Ray, then reused)."""
    manifest = seed.manifest
    if clip_embeddings_needed(plans):
        from osal_ray.data.clip_store import ensure_clip_embeddings

        manifest = ensure_clip_embeddings(manifest, config.clip, config.scoring, config.data.pool_files, log)
    if features_needed(plans):
        from osal_ray.features import ensure_features

        manifest = ensure_features(manifest, config, log)
    return seed if manifest is seed.manifest else dataclasses.replace(seed, manifest=manifest)


def materialize_seeds(prepared: PreparedExperiment, log: Callable[[str], None]) -> None:
    """An image pool's decode pass (Ray Data) and its annotator; one pool shared by every seed."""
    from osal_ray.data import materialize_image_pool

    config = prepared.config
    manifest, report = materialize_image_pool(prepared.image_pool, prepared.output_dir / "data", prepared.output_dir, log)
    log(f"image_pool: {report.summary()}")
    manifests = [manifest] * len(config.seeds)
    annotators = annotator_backend(config).create(AnnotatorSetup(config, prepared.output_dir, manifests, log))
    prepared.seeds = [PreparedSeed(seed, manifest, annotator) for seed, annotator in zip(config.seeds, annotators)]


def run_experiment(prepared: PreparedExperiment, log: Callable[[str], None] = print,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   on_phase: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run every trajectory (resuming finished rounds) until done or waiting for labels; keep outputs
    current; return the summary. ``on_round`` gets the running summary after every finished round,
    ``on_phase`` each phase as it starts (``preparing``, ``training``, ``scoring``, ``selecting``,
    ``publishing``) with what it works on. Releases the output directory's lock when it returns."""
    try:
        return _run(prepared, log, on_round, on_phase or (lambda phase, detail: None))
    finally:
        release_resident_scorers()
        if prepared.lock is not None:
            prepared.lock.release()


# While trajectories run, the tables and curves are rewritten at most this often (each rewrite reads
# every state: rewriting them after every round of a benchmark cell of hundreds of trajectories cost
# more than the rounds); they are always written when the run ends.
TABLES_EVERY_S = 10.0


class Every:
    """Called, says whether ``seconds`` have passed since it last said so (yes the first time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


def _run(prepared: PreparedExperiment, log: Callable[[str], None], report: Callable[[dict[str, Any]], None] | None,
         on_phase: Callable[[str, str], None]) -> dict[str, Any]:
    config, output_dir = prepared.config, prepared.output_dir
    if prepared.waiting is not None:
        log(prepared.waiting)
        summary = output_dir / "summary.json"
        return storage.read_json(summary, dict, "summary", "run the experiment command again once the labels are in to rewrite it") \
            if summary.is_file() else {"runs": {}, "mean": {}, "std": {}}
    if prepared.image_pool is not None:
        on_phase("preparing", f"reading the image pool {prepared.image_pool.root}")
        materialize_seeds(prepared, log)
    human = annotator_backend(config).human
    states: dict[tuple[str, int], RunState] = {k: v for k, v in prepared.states.items() if v is not None}
    result: dict[str, Any] = {}

    # The tables list trajectories in the order a sequential run adds them (saved ones, then job by job),
    # whichever finishes first.
    order = list(dict.fromkeys([*states, *((name, seed.seed) for seed in prepared.seeds for name in prepared.plans)]))

    def ordered() -> list[RunState]:
        return [states[key] for key in order if key in states] + [s for key, s in states.items() if key not in order]

    tables_due, curves_due = Every(TABLES_EVERY_S), Every(TABLES_EVERY_S)

    def on_round(state: RunState, record: RoundRecord) -> None:
        nonlocal result
        states[(state.strategy, state.seed)] = state
        log(round_row(state.strategy, state.seed, record))
        if report is not None or tables_due():  # a sweep's scheduler reads every round's result
            result = write_tables(output_dir, ordered(), _catalogs(prepared))
        if report is not None:
            report(result)

    def on_done() -> None:
        if curves_due():
            plot_curves(rounds_frame(ordered()), output_dir / "curves.png", title=config.name)

    jobs = _jobs(prepared)
    # People label through one shared round folder, and a Tune trial is one slot of a sweep: both run in the driver.
    sequential = human or in_tune_trial()
    threads = set_torch_threads(config)
    mode = scoring_mode(config, prepared.plans, prepared.seeds[0].manifest, 1)
    limit = 1 if sequential else concurrency_limit(config, len(jobs), cluster_cpus(), mode.resident, threads)
    if limit > 1 and mode.resident:
        mode = scoring_mode(config, prepared.plans, prepared.seeds[0].manifest, limit)
        limit = limit if mode.resident else concurrency_limit(config, len(jobs), cluster_cpus(), False, threads)
    log(f"scoring: {mode.reason}")
    log(round_header())
    failed: dict[tuple[str, int], BaseException] = {}
    if limit == 1:
        for prepared_seed in prepared.seeds:
            if clip_embeddings_needed(prepared.plans) or features_needed(prepared.plans):
                on_phase("preparing", f"seed {prepared_seed.seed}: stored columns (CLIP embeddings, frozen features)")
            for job in _jobs(prepared, [with_stored_columns(config, prepared.plans, prepared_seed, log)], mode.resident):
                states[job.key] = run_trajectory(job.context(log, on_round, on_phase), states.get(job.key))
                on_done()
    else:
        stored = []
        for prepared_seed in prepared.seeds:
            if clip_embeddings_needed(prepared.plans) or features_needed(prepared.plans):
                on_phase("preparing", f"seed {prepared_seed.seed}: stored columns (CLIP embeddings, frozen features)")
            stored.append(with_stored_columns(config, prepared.plans, prepared_seed, log))
        jobs = _jobs(prepared, stored, mode.resident)
        log(f"{len(jobs)} trajectories, at most {limit} at once (execution.max_concurrent_trajectories)")
        failed = run_concurrently(
            jobs, states, limit, log, on_round=lambda state: on_round(state, state.rounds[-1]), on_phase=on_phase,
            on_done=lambda key: on_done(),
        )
    result = write_tables(output_dir, ordered(), _catalogs(prepared), failed=_failures(failed))
    plot_curves(rounds_frame(ordered()), output_dir / "curves.png", title=config.name)
    if human:
        on_phase("publishing", "writing the next round's queries")
        _publish(prepared, states, log)
    if not prepared.served:  # the service's rounds go on: /status and the tables on disk say where it stands
        log("")
        log(summary_table(result))
        log(f"\noutputs in {output_dir}: rounds.parquet, queries.parquet, summary.json, config.yaml, curves.png")
    if failed:
        _raise_failures(failed, len(jobs), log)
    return result


def _jobs(prepared: PreparedExperiment, seeds: list[PreparedSeed] | None = None, resident: bool = False) -> list[TrajectoryJob]:
    """Every (strategy, seed) trajectory of the experiment, seed by seed (a resumed one with its saved legacy parameters)."""
    config = prepared.config
    return [
        TrajectoryJob(config=config, plan=resumed_plan(config, plan, prepared.states.get((name, seed.seed))), seed=seed.seed,
                      manifest=seed.manifest, annotator=seed.annotator,
                      run_location=run_location(config.resolved_storage(), name, seed.seed),
                      checkpoint_location=storage.join(config.resolved_storage(), "checkpoints"),
                      staging=prepared.output_dir / "staging", resident_scoring=resident,
                      default_threads=default_torch_threads())
        for seed in (prepared.seeds if seeds is None else seeds)
        for name, plan in prepared.plans.items()
    ]


_DEFAULT_THREADS: list[int] = []  # torch's own default in this process, before any run set it


def default_torch_threads() -> int:
    """Torch's default thread count in this process (what ``execution.torch_threads: null`` means)."""
    import torch

    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    return _DEFAULT_THREADS[0]


def set_torch_threads(config: ExperimentConfig) -> int:
    """Apply ``execution.torch_threads`` to this process (the driver); return torch's threads."""
    import torch

    torch.set_num_threads(config.execution.torch_threads or default_torch_threads())
    return torch.get_num_threads()


def scoring_mode(config: ExperimentConfig, plans: dict[str, StrategyPlan], manifest: PoolManifest,
                 concurrent: int) -> ModeDecision:
    """Resident scorers or streaming passes for this run (``scoring.mode``; ``auto`` asks the cluster)."""
    import ray

    stored = {"image"} | set().union(*(p.stored_columns for p in plans.values()))
    # A CLIP embedding column is not in the pool yet before its pass: count it at CLIP's widest (1024).
    size = manifest.num_pool * manifest.row_bytes(stored & ({"image"} | set(manifest.vector_columns)))
    size += manifest.num_pool * 4 * 1024 * len(stored - {"image"} - set(manifest.vector_columns))
    return use_resident(config.scoring, config.train, size, ray.cluster_resources(), concurrent)


def _failures(failed: dict[tuple[str, int], BaseException]) -> dict[str, str]:
    """summary.json's ``failed``: ``strategy/seed`` -> the error."""
    return {f"{name}/{seed}": describe_error(error) for (name, seed), error in sorted(failed.items())}


def _raise_failures(failed: dict[tuple[str, int], BaseException], total: int, log: Callable[[str], None]) -> None:
    """After the other trajectories finished: say which failed and raise (an InputError exits with code 2)."""
    log("")
    log(f"{len(failed)} of {total} trajectories failed (summary.json 'failed'):")
    for key, text in _failures(failed).items():
        log(f"  {key}: {text}")
    (name, seed), first = sorted(failed.items())[0]
    others = f" ({len(failed) - 1} more failed; see summary.json)" if len(failed) > 1 else ""
    if isinstance(first, InputError):
        if others and type(first).__init__ is InputError.__init__:
            raise type(first)(first.field, f"{first.message}{others}") from first
        raise first
    raise RuntimeError(f"trajectory {name} seed {seed} failed: {describe_error(first)}{others}") from first


def _catalogs(prepared: PreparedExperiment) -> list[PoolManifest]:
    return [seed.manifest for seed in prepared.seeds]


def _incomplete_round(output_dir: Path, config: ExperimentConfig) -> str | None:
    """What is missing, when a published round still lacks labels (status.json says so too); else None."""
    from osal_ray.annotation.files import open_round, waiting_status, write_status

    round_index = open_round(output_dir)
    if round_index is None:
        return None
    status = waiting_status(output_dir, round_index)
    if not status["missing"]:
        return None
    write_status(output_dir, status)
    where = annotator_backend(config).where(output_dir, config, status)
    return (f"round {round_index}: {status['missing']} of {status['queried']} queried images still need a label; "
            f"nothing to do yet. To label them, {where}; then run this command again")


def _publish(prepared: PreparedExperiment, states: dict[tuple[str, int], RunState], log: Callable[[str], None]) -> None:
    """Close the rounds every trajectory has imported; publish the open one and say where labels go."""
    from osal_ray.annotation.files import open_round, waiting_status, write_audit, write_status

    output_dir = prepared.output_dir
    annotator = prepared.seeds[0].annotator
    previous = open_round(output_dir)
    if previous is not None and all(s.pending is None or s.pending.round != previous for s in states.values()):
        annotator.close(previous)
    ran = {(name, seed) for name in prepared.config.strategies for seed in prepared.config.seeds}
    requests = [QueryRequest(s.strategy, s.seed, s.pending.round, tuple(s.pending.ids), tuple(s.pending.scores),
                             _as_tuple(s.pending.predictions), _as_tuple(s.pending.prediction_scores))
                for key, s in states.items() if s.pending is not None and key in ran]
    write_audit(output_dir)
    if not requests:
        write_status(output_dir, {"state": "finished", "rounds": prepared.config.al.rounds})
        return
    annotator.publish(requests)
    status = waiting_status(output_dir, requests[0].round)
    write_status(output_dir, status)
    log("\n" + _where_labels_go(prepared, status))


def _where_labels_go(prepared: PreparedExperiment, status: dict) -> str:
    """The line that tells people where the open round is labeled and what happens next."""
    config = prepared.config
    where = annotator_backend(config).where(prepared.output_dir, config, status)
    head = f"round {status['round']}: {status['queried']} images to label: {where}"
    if not prepared.served:
        return f"{head}; then run this command again"
    return f"{head} (or POST /labels); the service starts the next round once the last one is labeled"


def _as_tuple(values: list | None) -> tuple | None:
    return None if values is None else tuple(values)
