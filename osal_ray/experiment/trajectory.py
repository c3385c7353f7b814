"""One active-learning trajectory: a strategy and a seed, round after round, resumable.

Round 0 trains on the initial set. Each later round scores the pool (one Ray Data pass),
selects ``al.budget`` samples (pure numpy), reveals their labels (the oracle), retrains
(Ray Train) and evaluates; then the state is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from osal_ray import storage
from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest, initial_ids
from osal_ray.experiment import metrics
from osal_ray.experiment.networks import NetworkPlan, network_seed, plan_networks
from osal_ray.experiment.oracle import Oracle
from osal_ray.experiment.state import STATE_FILE, QueryRecord, RoundRecord, RunState, run_settings
from osal_ray.scoring import context_for, score_pool
from osal_ray.scoring.context import ScoringState, build_context
from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, Selection, Strategy
from osal_ray.training import TrainJob, fit_network


@dataclass(frozen=True)
class RunContext:
    """Everything one trajectory needs; built by the experiment runner."""

    config: ExperimentConfig
    strategy: Strategy
    seed: int
    manifest: PoolManifest
    oracle: Oracle
    run_location: str
    checkpoint_location: str
    staging: Path
    log: Callable[[str], None]
    on_round: Callable[[RunState, RoundRecord], None]

    @property
    def label(self) -> str:
        return f"[{self.strategy.name} seed={self.seed}]"


def run_trajectory(ctx: RunContext, state: RunState | None) -> RunState:
    """Run (or continue) the trajectory until ``al.rounds`` rounds are finished."""
    plans = plan_networks(ctx.config, ctx.manifest, ctx.strategy)
    state_path = storage.join(ctx.run_location, STATE_FILE)
    if state is None:
        state = RunState(ctx.strategy.name, ctx.seed, run_settings(ctx.config, ctx.strategy.name, ctx.seed))
        state.rng_state = np.random.default_rng(np.random.SeedSequence([ctx.seed, 0xA1])).bit_generator.state
    if state.completed_round < 0:
        record = _initial_round(ctx, state, plans)
        state.save(state_path)
        ctx.on_round(state, record)
    else:
        ctx.log(f"{ctx.label} resuming after round {state.completed_round}")
    for round_index in range(state.completed_round + 1, ctx.config.al.rounds + 1):
        record = _query_round(ctx, state, plans, round_index)
        state.save(state_path)
        ctx.on_round(state, record)
    return state


def _initial_round(ctx: RunContext, state: RunState, plans: list[NetworkPlan]) -> RoundRecord:
    ids = initial_ids(ctx.manifest)
    known = ctx.oracle.known_index(ids)
    state.labeled_ids = ids[known >= 0].tolist()
    state.labeled_labels = known[known >= 0].tolist()
    state.invalid_ids = ids[known < 0].tolist()
    ctx.log(f"{ctx.label} round 0: training on the initial set ({len(state.labeled_ids)} known, {len(state.invalid_ids)} OOD)")
    accuracy, seconds = _train_all(ctx, state, plans, 0)
    state.completed_round = 0
    record = RoundRecord(
        round=0,
        n_labeled_known=len(state.labeled_ids),
        n_invalid=len(state.invalid_ids),
        budget_spent=0,
        n_queried=0,
        accuracy=accuracy,
        precision=math.nan,
        recall=metrics.recall(len(state.labeled_ids), ctx.oracle.num_known),
        seconds={"train": seconds},
    )
    state.rounds.append(record)
    return record


def _query_round(ctx: RunContext, state: RunState, plans: list[NetworkPlan], round_index: int) -> RoundRecord:
    rounds = ctx.config.al.rounds
    started = time.perf_counter()
    params = ctx.config.strategy_params.get(ctx.strategy.name, {})
    columns = list(ctx.strategy.required_columns(params))
    timings: dict[str, float] = {}
    scores = score_pool(
        ctx.manifest,
        state.checkpoints,
        columns,
        ctx.config.scoring,
        network_inputs={plan.name: plan.spec.input for plan in plans},
        context=build_context(context_for(columns), ScoringState(ctx.config, ctx.manifest, state.labeled_ids, state.labeled_labels)),
        progress=lambda msg: ctx.log(f"{ctx.label} round {round_index}/{rounds}: {msg}"),
        timings=timings,
    )
    scored = time.perf_counter()
    annotated = np.isin(scores.ids, state.annotated_ids())
    pool = scores.subset(~annotated)
    labeled = None
    if ctx.strategy.needs_labeled:
        labeled_part = scores.subset(annotated)
        labeled = LabeledScores(labeled_part, ctx.oracle.known_index(labeled_part.ids))
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    context = QueryContext(
        num_known=ctx.manifest.num_known,
        rng=rng,
        params=params,
        labeled=labeled,
        round=round_index,
        carry=load_carry(ctx.run_location, state.carry_file),
    )
    selection = ctx.strategy.select(pool, ctx.config.al.budget, context)
    state.carry_file = save_carry(ctx.run_location, round_index, selection.carry)
    selected = time.perf_counter()

    chosen = pool.ids[selection.indices]
    labelling = time.perf_counter()
    revealed = ctx.oracle.reveal(chosen)
    known = ctx.oracle.known_index(chosen)
    for query_id, score, label, k in zip(chosen.tolist(), selection.scores.tolist(), revealed.tolist(), known.tolist()):
        state.queries.append(QueryRecord(round_index, query_id, score, label, k >= 0))
        if k >= 0:
            state.labeled_ids.append(query_id)
            state.labeled_labels.append(k)
        else:
            state.invalid_ids.append(query_id)
    labelled = time.perf_counter()
    extra = selection_diagnostics(selection, pool, ctx.oracle)
    extra["driver_peak_rss_mb"] = peak_rss_mb()
    n_known = int((known >= 0).sum())
    ctx.log(
        f"{ctx.label} round {round_index}/{rounds}: scored {len(scores)} in {scored - started:.1f}s, "
        f"queried {len(chosen)} ({n_known} known) in {selected - scored:.2f}s"
    )

    accuracy, train_seconds = _train_all(ctx, state, plans, round_index)
    state.rng_state = rng.bit_generator.state
    state.completed_round = round_index
    record = RoundRecord(
        round=round_index,
        n_labeled_known=len(state.labeled_ids),
        n_invalid=len(state.invalid_ids),
        budget_spent=(state.rounds[-1].budget_spent if state.rounds else 0) + len(chosen),
        n_queried=len(chosen),
        accuracy=accuracy,
        precision=metrics.precision(known >= 0),
        recall=metrics.recall(len(state.labeled_ids), ctx.oracle.num_known),
        extra=extra,
        seconds={
            "score": timings.get("score", scored - started),
            "gather": timings.get("gather", 0.0),
            "select": selected - scored,
            "label": labelled - labelling,
            "train": train_seconds,
        },
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


def selection_diagnostics(selection: Selection, pool: PoolScores, oracle: Oracle) -> dict[str, float]:
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


def _train_all(ctx: RunContext, state: RunState, plans: list[NetworkPlan], round_index: int) -> tuple[float, float]:
    """Train every planned network on the current labeled set; returns (accuracy, seconds)."""
    started = time.perf_counter()
    accuracy = math.nan
    for index, plan in enumerate(plans):
        if plan.once and plan.name in state.checkpoints:
            continue  # a frozen network (e.g. the self-supervised encoder) is trained in round 0 only
        train = plan.train
        ids, labels = plan.training_set(
            state.labeled_ids, state.labeled_labels, state.invalid_ids, ctx.manifest.num_known, ctx.oracle.pool_ids
        )
        job = TrainJob(
            network=plan.name,
            spec=plan.spec,
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
        name = f"{ctx.strategy.name}-seed{ctx.seed}-round{round_index:03d}-{plan.name}-{_digest(ids, labels)}"
        result = fit_network(job, ctx.checkpoint_location, name, staging=ctx.staging)
        state.checkpoints[plan.name] = result.checkpoint_path
        if plan.evaluate:
            accuracy = float(result.metrics["accuracy"])
    return accuracy, time.perf_counter() - started
