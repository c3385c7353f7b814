"""One plan per strategy, resolved once when an experiment is prepared.

A ``StrategyPlan`` holds everything the loop needs to know about a strategy in a job: its typed
parameters, the score columns it reads, the stored pool columns and the per-round context those
need, and the full recipe of every network it trains. Validation, run state, the runner and the
trajectory read the plan; nothing resolves parameters again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from osal_ray.config import ExperimentConfig
from osal_ray.data.vector_store import FEATURES
from osal_ray.errors import InputError
from osal_ray.experiment.networks import network_recipes
from osal_ray.models import model_input
from osal_ray.params import Params
from osal_ray.scoring import context_for, networks_for, stored_columns_for
from osal_ray.strategies import STRATEGIES, Strategy, get_strategy
from osal_ray.training.recipe import NetworkRecipe


# A truth-aware reference (a benchmark's ceiling) is a registered strategy whose candidates are only the
# pool's true knowns. Its name carries this suffix, which no registered name has, so that a job's
# ``strategies`` cannot name it: only ``plan_reference`` (Python, a benchmark) makes one.
TRUE_KNOWN_SUFFIX = "@true_known"
Candidates = Literal["all", "true_known"]


@dataclass(frozen=True)
class StrategyPlan:
    """A strategy as one job runs it; ``candidates``: "true_known" for a truth-aware reference (it
    selects among the pool's truly known samples, which only a simulated annotator can tell)."""

    strategy: Strategy
    params: Params
    columns: tuple[str, ...]
    stored_columns: frozenset[str]
    context: frozenset[str]
    networks: tuple[NetworkRecipe, ...]
    candidates: Candidates = "all"

    @property
    def name(self) -> str:
        return self.strategy.name + (TRUE_KNOWN_SUFFIX if self.candidates == "true_known" else "")

    @property
    def uses_clip(self) -> bool:
        """Whether the pool needs CLIP embeddings for this strategy (its scores or a network's input)."""
        return "clip_embedding" in self.stored_columns


def plan_strategy(config: ExperimentConfig, name: str, params: Mapping[str, Any] | None = None) -> StrategyPlan:
    """Resolve strategy ``name`` in ``config`` (InputError naming the dotted key for a bad parameter);
    ``params``, when given, replaces the job's parameters of it (a resumed run's own, see ``experiment.state``).
    A reference's name (``<strategy>@true_known``, saved in its run state) plans that reference."""
    if name.endswith(TRUE_KNOWN_SUFFIX):
        return plan_reference(config, name.removesuffix(TRUE_KNOWN_SUFFIX), params)
    strategy = get_strategy(name)
    params = strategy.resolve_params(strategy.params_from(config) if params is None else params)
    columns = strategy.required_columns(params)
    if FEATURES in stored_columns_for(columns) and config.features.extractor is None:
        reading = ", ".join(c for c in columns if FEATURES in stored_columns_for([c]))
        raise InputError(f"strategy_params.{name}", f"{name}'s score columns {reading} read frozen features: set "
                                                    "features.extractor (e.g. pixels or simclr), or its parameters that ask for them")
    networks = network_recipes(config, name, networks_for(columns), strategy.network_options(params))
    stored = stored_columns_for(columns) | {model_input(n.model) for n in networks}
    return StrategyPlan(strategy, params, columns, frozenset(stored - {"image"}), frozenset(context_for(columns)), networks)


def plan_reference(config: ExperimentConfig, name: str, params: Mapping[str, Any] | None = None) -> StrategyPlan:
    """Strategy ``name`` restricted to the pool's true knowns: a benchmark's truth-aware ceiling, run
    as ``name@true_known`` next to the job's strategies (``prepare_experiment(config, plans=...)``). Its
    trajectories need a simulated annotator (the truth); a job's config cannot name it."""
    return dataclasses.replace(plan_strategy(config, name, params), candidates="true_known")


def plan_experiment(config: ExperimentConfig) -> dict[str, StrategyPlan]:
    """The plan of every strategy the job runs; ``strategy_params`` of a strategy it does not run are
    checked too (a typo there would otherwise go unnoticed until someone adds the strategy)."""
    plans = {name: plan_strategy(config, name) for name in config.strategies}
    for name in config.strategy_params:
        if name not in plans:
            strategy = STRATEGIES.get(name, f"strategy_params.{name}")
            strategy.resolve_params(strategy.params_from(config))
    return plans


def stored_columns_needed(plans: dict[str, StrategyPlan]) -> set[str]:
    """Stored pool columns beyond the image that these plans' networks and scores read."""
    return set().union(*(p.stored_columns for p in plans.values()))


def features_needed(plans: dict[str, StrategyPlan]) -> bool:
    """Whether some plan's networks read frozen features (the once-per-job extraction pass)."""
    return any(FEATURES in p.stored_columns for p in plans.values())


def clip_embeddings_needed(plans: dict[str, StrategyPlan]) -> bool:
    """Whether some plan reads CLIP embeddings (the once-per-job embedding pass and the CLIP weights)."""
    return any(p.uses_clip for p in plans.values())
