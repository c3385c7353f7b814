"""Trajectories as Ray tasks: each (strategy, seed) runs in its own task; the driver orchestrates.

The task builds the trajectory's ``RunContext`` itself; what the driver's callables did in-process
(log lines, finished rounds, phases) comes back as events through a small relay actor, which the
driver drains while it waits. The driver prints each finished round as one table row, rewrites
the tables, and records a trajectory that raised as failed while the others run on.

Results are those of a sequential run: a trajectory seeds everything from its own state, computes
with the torch threads its state recorded (``execution.torch_threads``; floating-point sums depend on
it; ``run_trajectory`` sets them), and its scoring actors set their own.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from osal_ray.config import ExperimentConfig
from osal_ray.experiment.state import RoundRecord, RunState
from osal_ray.experiment.trajectory import TrajectoryJob


# A Ray Data task without its own num_cpus (the scoring pass's repartition) reserves a whole CPU.
DATA_TASK_CPUS = 1.0


def trajectory_footprint(config: ExperimentConfig, resident: bool = False) -> float:
    """The CPUs one trajectory holds: its task plus, with streaming passes, the larger of its scoring
    actors and its training workers (0 in-process), which it holds one after the other; with
    resident scorers, both (the scorers stay alive while it trains); inline scoring, none."""
    scoring = config.scoring
    actors = scoring.max_actors if scoring.max_actors is not None else scoring.num_actors
    scoring_cpus = 0.0 if scoring.mode == "inline" else (scoring.num_actors if resident else actors) * scoring.cpus_per_actor
    training_cpus = config.train.num_workers * config.train.cpus_per_worker
    held = scoring_cpus + training_cpus if resident else max(scoring_cpus, training_cpus)
    return config.execution.cpus_per_trajectory + held


def concurrency_limit(config: ExperimentConfig, trajectories: int, cluster_cpus: float | None, resident: bool = False,
                      torch_threads: int = 1) -> int:
    """How many trajectories run at once: ``execution.max_concurrent_trajectories``, or (null) as many
    as ``cluster_cpus`` hold side by side. Streaming passes also keep one CPU free for their short
    tasks (reads, repartition): N x footprint + max(1, cpus_per_read) <= CPUs, else one trajectory
    waits on another's CPUs for ever (Ray Data actors are held for a whole pass). Resident scorers
    run no such tasks once started. In-process training (``train.num_workers: 0``) reserves nothing
    but keeps ``torch_threads`` cores busy: N x threads <= CPUs too, or trajectories only slow each
    other down (measured: 3 trajectories of 2 threads on 2 cores ran slower than one after the
    other). Never more than there are trajectories."""
    wanted = config.execution.max_concurrent_trajectories
    if wanted is None:
        cpus = cluster_cpus or 1.0
        streams = not resident and config.scoring.mode != "inline"
        reserved = max(DATA_TASK_CPUS, config.scoring.cpus_per_read) if streams else 0.0
        footprint = trajectory_footprint(config, resident)
        wanted = max(1, math.floor((cpus - reserved) / footprint + 1e-9)) if footprint > 0 else trajectories
        if config.train.num_workers == 0:
            wanted = min(wanted, max(1, math.floor(cpus / max(1, torch_threads) + 1e-9)))
    return max(1, min(wanted, trajectories))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


class _Relay:
    """Events from the trajectory tasks to the driver, in the order each task sent them."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def put(self, event: tuple) -> None:
        self.events.append(event)

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def _run_job(job: TrajectoryJob, state: RunState | None, relay: Any) -> RunState:
    """The body of a trajectory's Ray task."""
    import ray

    from osal_ray.cluster import configure_ray_data
    from osal_ray.experiment.trajectory import run_trajectory
    from osal_ray.scoring.resident import release_resident_scorers

    configure_ray_data()

    def send(event: tuple) -> None:
        ray.get(relay.put.remote(event))  # waited for: every event is in before the task's result

    def log(line: str) -> None:
        send(("log", line if line.startswith(job.label) else f"{job.label} {line}"))

    def on_round(state: RunState, record: RoundRecord) -> None:
        send(("round", state))

    def on_phase(phase: str, detail: str) -> None:
        send(("phase", phase, detail))

    try:
        return run_trajectory(job.context(log, on_round, on_phase), state)
    finally:
        release_resident_scorers()


def run_concurrently(jobs: list[TrajectoryJob], states: dict[tuple[str, int], RunState], limit: int,
                     log: Callable[[str], None], on_round: Callable[[RunState], None],
                     on_phase: Callable[[str, str], None],
                     on_done: Callable[[tuple[str, int]], None]) -> dict[tuple[str, int], BaseException]:
    """Run ``jobs`` as Ray tasks, at most ``limit`` at once; ``states`` gets each final state.

    ``on_round`` sees every finished round's state as it arrives, ``on_done`` each trajectory that
    ends (finished or failed). Returns the failures: the error each failed trajectory raised.
    A KeyboardInterrupt cancels the running tasks (they resume after their last finished round).
    """
    import ray

    relay = ray.remote(num_cpus=0)(_Relay).remote()
    task = ray.remote(_run_job).options(num_cpus=jobs[0].config.execution.cpus_per_trajectory, max_retries=0)
    waiting = list(jobs)
    running: dict[Any, TrajectoryJob] = {}
    failed: dict[tuple[str, int], BaseException] = {}

    def dispatch() -> None:
        for event in ray.get(relay.take.remote()):
            if event[0] == "log":
                log(event[1])
            elif event[0] == "round":
                on_round(event[1])
            else:
                on_phase(event[1], event[2])

    try:
        while waiting or running:
            while waiting and len(running) < limit:
                job = waiting.pop(0)
                running[task.remote(job, states.get(job.key), relay)] = job
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            dispatch()
            for ref in ready:
                job = running.pop(ref)
                try:
                    states[job.key] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (a trajectory fails alone; the others run on)
                    cause = _cause(exc)
                    failed[job.key] = cause
                    log(f"{job.label} failed: {describe_error(cause)}")
                on_done(job.key)
    finally:
        for ref in running:
            ray.cancel(ref)
        ray.kill(relay)
    return failed


def _cause(exc: BaseException) -> BaseException:
    """The error the trajectory raised, out of Ray's wrapping when it could be rebuilt."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        return exc.cause
    return exc


def describe_error(exc: BaseException) -> str:
    from osal_ray.errors import InputError

    if isinstance(exc, InputError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
