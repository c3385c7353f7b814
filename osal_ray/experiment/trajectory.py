"""One active-learning trajectory: a strategy and a seed, round after round, resumable.

Round 0 trains on the initial set. Each later round has two halves, whoever labels:

1. *select*: score the pool (one Ray Data pass), select ``al.budget`` samples (pure numpy) and
   save them as the round's pending query (the state is written atomically);
2. *complete*: once the annotator answers for every pending sample, apply the labels (known,
   unknown, or skipped), retrain (Ray Train), evaluate, and write the state again.

The simulated annotator answers at once, so a simulated round runs both halves back to back; a
human-labeled trajectory stops after the first half and completes in a later invocation.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from osal_ray import storage
from osal_ray.config import ExperimentConfig
from osal_ray.errors import NON_FINITE_MARKER, TrainingDiverged
from osal_ray.data.image_pool import read_absent_ids, read_initial_labels
from osal_ray.data.pool import PoolManifest, initial_ids, read_pool_ids
from osal_ray.experiment import metrics
from osal_ray.experiment.networks import network_seed
from osal_ray.experiment.plan import StrategyPlan
from osal_ray.experiment.predictions import PROBABILITY_COLUMN, query_guesses
from osal_ray.annotation.contract import SKIPPED, UNKNOWN, Annotator
from osal_ray.experiment.state import STATE_FILE, PendingQuery, QueryRecord, RoundRecord, RunState, run_settings
from osal_ray.scoring import score_pool
from osal_ray.scoring.context import ScoringState, build_context
from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, Selection
from osal_ray.training import NetworkSpec, TrainJob, fit_network
from osal_ray.training.checkpoints import prune_checkpoints


@dataclass(frozen=True)
class TrajectoryJob:
    """What one (strategy, seed) trajectory works on, all of it picklable: it travels to a Ray task
    when trajectories run concurrently. ``resident_scoring``: its passes run on resident scorers."""

    config: ExperimentConfig
    plan: StrategyPlan
    seed: int
    manifest: PoolManifest
    annotator: Annotator
    run_location: str
    checkpoint_location: str
    staging: Path
    resident_scoring: bool = False
    default_threads: int = 1  # torch's default in the driver: what a trajectory saved without a count keeps

    @property
    def key(self) -> tuple[str, int]:
        return (self.plan.name, self.seed)

    @property
    def label(self) -> str:
        return f"[{self.plan.name} seed={self.seed}]"

    def context(self, log: Callable[[str], None], on_round: Callable[[RunState, RoundRecord], None],
                on_phase: Callable[[str, str], None]) -> "RunContext":
        """The trajectory's RunContext with these callables (the driver's, or a task's that send events)."""
        return RunContext(**{f.name: getattr(self, f.name) for f in fields(TrajectoryJob)},
                          log=log, on_round=on_round, on_phase=on_phase)


@dataclass(frozen=True, kw_only=True)
class RunContext(TrajectoryJob):
    """A trajectory's job and the callables it reports through (built where the trajectory runs)."""

    log: Callable[[str], None]
    on_round: Callable[[RunState, RoundRecord], None]
    on_phase: Callable[[str, str], None] = lambda phase, detail: None  # (training|scoring|selecting, what)


def run_trajectory(ctx: RunContext, state: RunState | None) -> RunState:
    """Run (or continue) the trajectory until ``al.rounds`` rounds are finished, or until it waits
    for labels (``state.pending`` is then set and the annotator has not answered yet)."""
    specs = {recipe.name: recipe.spec(ctx.manifest) for recipe in ctx.plan.networks}
    state_path = storage.join(ctx.run_location, STATE_FILE)
    if state is None:
        state = RunState(ctx.plan.name, ctx.seed, run_settings(ctx.config, ctx.plan, ctx.seed),
                         torch_threads=ctx.config.execution.torch_threads or ctx.default_threads)
        state.rng_state = np.random.default_rng(np.random.SeedSequence([ctx.seed, 0xA1])).bit_generator.state
    _use_threads(state.torch_threads or ctx.default_threads)
    if state.completed_round < 0:
        record = _initial_round(ctx, state, specs)
        state.save(state_path)
        _prune_checkpoints(ctx, state)
        ctx.on_round(state, record)
    elif state.pending is None and state.completed_round < ctx.config.al.rounds:
        ctx.log(f"{ctx.label} resuming after round {state.completed_round}")
    while True:
        if state.pending is not None:
            answers = ctx.annotator.answers(state.pending.round, np.asarray(state.pending.ids, dtype=np.int64))
            if answers is None:
                return state
            record = _complete_round(ctx, state, specs, answers)
            state.save(state_path)
            _prune_checkpoints(ctx, state)
            ctx.on_round(state, record)
        if state.completed_round >= ctx.config.al.rounds:
            return state
        _select_round(ctx, state, specs, state.completed_round + 1)
        state.save(state_path)


def _use_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _initial_round(ctx: RunContext, state: RunState, specs: dict[str, NetworkSpec]) -> RoundRecord:
    ids = initial_ids(ctx.manifest)
    given = read_initial_labels(ctx.manifest)
    known = given if given is not None else ctx.annotator.known_index(ids)
    state.labeled_ids = ids[known >= 0].tolist()
    state.labeled_labels = known[known >= 0].tolist()
    state.invalid_ids = ids[known < 0].tolist()
    ctx.log(f"{ctx.label} round 0: training on the initial set ({len(state.labeled_ids)} known, {len(state.invalid_ids)} OOD)")
    accuracy, seconds = _train_all(ctx, state, specs, 0)
    state.completed_round = 0
    record = RoundRecord(
        round=0,
        n_labeled_known=len(state.labeled_ids),
        n_invalid=len(state.invalid_ids),
        budget_spent=0,
        n_queried=0,
        accuracy=accuracy,
        precision=math.nan,
        recall=_recall(ctx, state),
        seconds={"train": seconds},
    )
    state.rounds.append(record)
    return record


def _recall(ctx: RunContext, state: RunState) -> float:
    total = ctx.annotator.num_known
    return metrics.recall(len(state.labeled_ids), total) if total is not None else math.nan


def _select_round(ctx: RunContext, state: RunState, specs: dict[str, NetworkSpec], round_index: int) -> None:
    """Score the pool, select the round's batch and make it the pending query (labels not yet known)."""
    rounds = ctx.config.al.rounds
    started = time.perf_counter()
    columns = list(ctx.plan.columns)
    if ctx.annotator.shows_predictions and PROBABILITY_COLUMN not in columns:
        columns.append(PROBABILITY_COLUMN)  # for the guesses people see, not for the strategy
    timings: dict[str, float] = {}
    ctx.on_phase("scoring", f"{ctx.label} round {round_index}/{rounds}: scoring the pool")

    def progress(message: str) -> None:
        ctx.log(f"{ctx.label} round {round_index}/{rounds}: {message}")
        ctx.on_phase("scoring", f"{ctx.label} round {round_index}/{rounds}: {message}")

    scores = score_pool(
        ctx.manifest,
        state.checkpoints,
        columns,
        ctx.config.scoring,
        network_inputs={name: spec.input for name, spec in specs.items()},
        context=build_context(set(ctx.plan.context), ScoringState(ctx.config, ctx.manifest, state.labeled_ids, state.labeled_labels)),
        progress=progress,
        timings=timings,
        resident=ctx.resident_scoring,
    )
    scored = time.perf_counter()
    _check_finite(ctx, scores, round_index)
    annotated = np.isin(scores.ids, state.annotated_ids())
    candidate = ~annotated & ~np.isin(scores.ids, read_absent_ids(ctx.manifest))
    if ctx.plan.candidates == "true_known":
        if not ctx.annotator.has_truth:
            raise RuntimeError(f"{ctx.label} is a truth-aware reference: it needs a simulated annotator's truth")
        candidate &= ctx.annotator.known_index(scores.ids) >= 0
    scored_pool = scores.subset(candidate)
    ctx.on_phase("selecting", f"{ctx.label} round {round_index}/{rounds}: selecting {ctx.config.al.budget} of "
                              f"{len(scored_pool)} candidates")
    pool = PoolScores(scored_pool.ids, {name: scored_pool.columns[name] for name in ctx.plan.columns})
    labeled = None
    if ctx.plan.strategy.needs_labeled:
        labeled_part = scores.subset(np.isin(scores.ids, state.labeled_or_invalid_ids()))
        labeled = LabeledScores(labeled_part, state.known_index(labeled_part.ids))
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    context = QueryContext(
        num_known=ctx.manifest.num_known,
        rng=rng,
        params=ctx.plan.params,
        labeled=labeled,
        round=round_index,
        carry=load_carry(ctx.run_location, state.carry_file),
    )
    selection = ctx.plan.strategy.select(pool, ctx.config.al.budget, context)
    state.carry_file = save_carry(ctx.run_location, round_index, selection.carry)
    selected = time.perf_counter()
    chosen = pool.ids[selection.indices]
    extra = selection_diagnostics(selection, pool, ctx.annotator) if ctx.annotator.has_truth else \
        {name: float(value) for name, value in selection.values.items()}
    extra["driver_peak_rss_mb"] = peak_rss_mb()
    state.rng_state = rng.bit_generator.state
    guesses, guess_scores = query_guesses(scored_pool, selection) if ctx.annotator.shows_predictions else (None, None)
    state.pending = PendingQuery(
        round=round_index,
        ids=chosen.tolist(),
        scores=selection.scores.tolist(),
        extra=extra,
        seconds={"score": timings.get("score", scored - started), "gather": timings.get("gather", 0.0), "select": selected - scored},
        started_at=time.time(),
        predictions=guesses,
        prediction_scores=guess_scores,
    )
    extra["n_scored"] = float(len(scores))


def _complete_round(ctx: RunContext, state: RunState, specs: dict[str, NetworkSpec], answers: np.ndarray) -> RoundRecord:
    """Apply the annotator's labels of the pending query, retrain, evaluate; the round is finished."""
    pending = state.pending
    round_index = pending.round
    labelling = time.perf_counter()
    chosen = np.asarray(pending.ids, dtype=np.int64)
    original = ctx.annotator.reveal(chosen) if ctx.annotator.has_truth else answers
    for query_id, score, label, answer in zip(chosen.tolist(), pending.scores, np.asarray(original).tolist(), answers.tolist()):
        state.queries.append(QueryRecord(round_index, query_id, score, int(label), answer >= 0, skipped=answer == SKIPPED))
        if answer >= 0:
            state.labeled_ids.append(query_id)
            state.labeled_labels.append(int(answer))
        elif answer == UNKNOWN:
            state.invalid_ids.append(query_id)
        else:
            state.skipped_ids.append(query_id)
    labelled = time.perf_counter()
    bought = answers != SKIPPED
    n_known = int((answers >= 0).sum())
    extra = dict(pending.extra)
    n_scored = int(extra.pop("n_scored", 0))
    if (~bought).any():
        extra["n_skipped"] = float((~bought).sum())
    ctx.log(
        f"{ctx.label} round {round_index}/{ctx.config.al.rounds}: scored {n_scored} in {pending.seconds['score']:.1f}s, "
        f"queried {len(chosen)} ({n_known} known{f', {int((~bought).sum())} skipped' if (~bought).any() else ''}) "
        f"in {pending.seconds['select']:.2f}s"
    )

    corrected = sum(state.apply_correction(c, round_index) for c in ctx.annotator.corrections())
    if corrected:
        ctx.log(f"{ctx.label} round {round_index}/{ctx.config.al.rounds}: {corrected} label(s) corrected after their round "
                "closed; trained with the corrected labels")
    accuracy, train_seconds = _train_all(ctx, state, specs, round_index)
    state.completed_round = round_index
    state.pending = None
    record = RoundRecord(
        round=round_index,
        n_labeled_known=len(state.labeled_ids),
        n_invalid=len(state.invalid_ids),
        budget_spent=(state.rounds[-1].budget_spent if state.rounds else 0) + int(bought.sum()),
        n_queried=int(bought.sum()),
        accuracy=accuracy,
        precision=metrics.precision(answers[bought] >= 0),
        recall=_recall(ctx, state),
        extra=extra,
        seconds={**pending.seconds, "label": labelled - labelling, "train": train_seconds},
    )
    state.rounds.append(record)
    return record


def peak_rss_mb() -> float:
    """The driver process's peak resident memory so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_carry(run_location: str, name: str | None) -> dict[str, np.ndarray]:
    """The arrays a strategy carried over from its previous round (empty at first)."""
    if name is None:
        return {}
    with np.load(io.BytesIO(storage.read_bytes(storage.join(run_location, name))), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def save_carry(run_location: str, round_index: int, carry: Mapping[str, np.ndarray]) -> str | None:
    """Write a strategy's carried arrays before the round's state refers to them."""
    if not carry:
        return None
    name = f"carry_round_{round_index:03d}.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in carry.items()})
    storage.write_bytes(storage.join(run_location, name), buffer.getvalue())
    return name


def selection_diagnostics(selection: Selection, pool: PoolScores, oracle: Annotator) -> dict[str, float]:
    """Evaluate a strategy's per-candidate diagnostics against the truth.

    - a float array ``x`` gives ``auroc_x``: how well it ranks known above unknown;
    - the boolean mask ``predicted_known`` (an open-set filter's decision) gives
      ``filter_accuracy``, ``filter_precision``, ``filter_recall`` and ``filter_f1``;
    - any other boolean mask ``m`` gives ``known_fraction_m``: the known share of what it marks.
    Scalars in ``selection.values`` are recorded as they are.
    """
    extra = {name: float(value) for name, value in selection.values.items()}
    if not selection.diagnostics:
        return extra
    is_known = oracle.known_index(pool.ids) >= 0
    for name, values in selection.diagnostics.items():
        values = np.asarray(values)
        if values.dtype != bool:
            extra[f"auroc_{name}"] = metrics.auroc(values, is_known)
        elif name == "predicted_known":
            extra.update({f"filter_{k}": v for k, v in metrics.binary_scores(values, is_known).items()})
        else:
            extra[f"known_fraction_{name}"] = metrics.precision(is_known[values])
    return extra


def _digest(ids: list[int], labels: list[int]) -> str:
    data = np.asarray([ids, labels], dtype=np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:10]


def _train_all(ctx: RunContext, state: RunState, specs: dict[str, NetworkSpec], round_index: int) -> tuple[float, float]:
    """Train every planned network on the current labeled set; returns (accuracy, seconds)."""
    started = time.perf_counter()
    accuracy = math.nan
    for index, plan in enumerate(ctx.plan.networks):
        if plan.once and plan.name in state.checkpoints:
            continue  # a frozen network (e.g. the self-supervised encoder) is trained in round 0 only
        train = plan.train
        ids, labels = plan.training_set(
            state.labeled_ids, state.labeled_labels, state.invalid_ids, ctx.manifest.num_known,
            lambda: np.setdiff1d(read_pool_ids(ctx.manifest), state.skipped_ids),
        )
        ctx.on_phase("training", f"{ctx.label} round {round_index}: {plan.name} on {len(ids)} samples")
        job = TrainJob(
            network=plan.name,
            spec=specs[plan.name],
            manifest=ctx.manifest,
            ids=ids,
            labels=labels,
            seed=network_seed(ctx.seed, round_index, index),
            train=train,
            objective=plan.objective,
            objective_params=plan.objective_params,
            evaluate=plan.evaluate,
            init_checkpoint=None if train.reinit else state.checkpoints.get(plan.name),
            log_prefix=f"{ctx.label} round {round_index}" if train.epochs >= 20 and len(ids) >= 2000 else "",
        )
        # The digest of the training set keeps Ray Train from resuming a run of another labeled set.
        name = f"{ctx.plan.name}-seed{ctx.seed}-round{round_index:03d}-{plan.name}-{_digest(ids, labels)}"
        try:
            result = fit_network(job, ctx.checkpoint_location, name, staging=ctx.staging)
        except Exception as exc:  # noqa: BLE001  (Ray wraps the worker's error; recognise ours by its marker)
            detail = _non_finite_detail(exc)
            if detail is None:
                raise
            raise TrainingDiverged(
                "train.lr", f"{ctx.label} the {plan.name} diverged in round {round_index} ({detail}); the run state is kept at "
                f"{'round ' + str(state.completed_round) if state.completed_round >= 0 else 'the start'}. "
                f"Lower train.lr (now {train.lr}) or check the data"
            ) from None
        state.checkpoints[plan.name] = result.checkpoint_path
        if plan.evaluate:
            accuracy = float(result.metrics["accuracy"])
    return accuracy, time.perf_counter() - started


def _prune_checkpoints(ctx: RunContext, state: RunState) -> None:
    """``train.keep_checkpoints: last``: once the finished round's state is saved, delete this trajectory's
    training runs it no longer refers to (a frozen network's round-0 run stays: the state still refers to it)."""
    if ctx.config.train.keep_checkpoints == "last":
        prune_checkpoints(ctx.checkpoint_location, state.checkpoints.values(), f"{ctx.plan.name}-seed{ctx.seed}-round",
                          staging=ctx.staging, log=ctx.log)


def _check_finite(ctx: RunContext, scores: PoolScores, round_index: int) -> None:
    """Refuse to select from NaN or infinite scores: they rank by accident (pool order, or a crash)."""
    bad = {name: int((~np.isfinite(values)).any(axis=tuple(range(1, values.ndim))).sum())
           for name, values in scores.columns.items() if np.issubdtype(values.dtype, np.floating)}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        described = ", ".join(f"{name} ({count} samples)" for name, count in bad.items())
        raise TrainingDiverged("train.lr", f"{ctx.label} round {round_index}: the networks' scores are NaN or infinite: {described}; "
                                           f"the run state is kept at round {round_index - 1}. Lower train.lr or check the data")


def _non_finite_detail(exc: BaseException) -> str | None:
    """What a training worker said about a non-finite loss, found anywhere in Ray's wrapping of its error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if NON_FINITE_MARKER in text:
            return text[text.index(NON_FINITE_MARKER) + len(NON_FINITE_MARKER) + 2 :].split("\n")[0].strip()
        exc = exc.__cause__ or exc.__context__
    return None
