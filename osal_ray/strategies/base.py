"""The query-strategy contract: pure functions of gathered score arrays, behind one registry.

Every strategy is ``select(pool, budget, context) -> Selection``:

- ``pool`` (PoolScores): the unlabeled candidates' ids and the score columns it declared;
- ``budget``: how many to query;
- ``context`` (QueryContext): number of known classes, a seeded numpy Generator, the strategy's
  typed parameters (its ``Params`` dataclass), and (for strategies that declare ``needs_labeled``) the same columns for the
  already annotated samples.

Strategies never touch Ray, files or true labels, so they are unit-tested on hand-made arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from osal_ray.params import NoParams, Params
from osal_ray.registry import Registry


@dataclass(frozen=True)
class PoolScores:
    """Sample ids and per-sample score columns, all of the same length."""

    ids: np.ndarray
    columns: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} rows, ids have {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"score column {name!r} missing; have {sorted(self.columns)}") from None

    def subset(self, mask_or_index: np.ndarray) -> "PoolScores":
        """The rows selected by a boolean mask or an index array."""
        return PoolScores(self.ids[mask_or_index], {k: v[mask_or_index] for k, v in self.columns.items()})


@dataclass(frozen=True)
class LabeledScores:
    """Score columns of the annotated samples; ``labels`` are 0..K-1 for known, -1 for invalid (OOD)."""

    scores: PoolScores
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.scores):
            raise ValueError(f"{len(self.labels)} labels for {len(self.scores)} labeled rows")


@dataclass(frozen=True)
class QueryContext:
    """What a strategy may know besides the pool's scores."""

    num_known: int
    rng: np.random.Generator
    params: Any = field(default_factory=dict)  # the strategy's Params (a mapping is resolved by select)
    labeled: LabeledScores | None = None
    round: int = 1
    carry: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The chosen pool positions in query order, the score each was ranked by, and diagnostics.

    ``diagnostics`` holds per-candidate arrays (length of the pool) that the loop evaluates
    against the truth, e.g. ``known_probability`` for the AUROC of an open-set filter, and
    per-round scalars in ``values`` (e.g. a tuned temperature). ``carry`` holds arrays the
    strategy wants back next round (e.g. a meta-network's weights); the loop saves them with
    the run state and passes them in ``QueryContext.carry``.
    """

    indices: np.ndarray
    scores: np.ndarray
    diagnostics: Mapping[str, np.ndarray] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
    carry: Mapping[str, np.ndarray] = field(default_factory=dict)


SelectFn = Callable[[PoolScores, int, QueryContext], Selection]


@dataclass(frozen=True)
class NetworkOptions:
    """How a strategy wants one of its networks trained, beyond the defaults.

    ``head`` wraps the backbone (see ``osal_ray.models.heads``), ``objective`` names a
    training objective (``osal_ray.training.objectives``), ``train_overrides`` replaces
    ``train`` config values for this network (e.g. more epochs for a self-supervised encoder).
    ``with_invalid`` adds the invalid (queried unknown) samples to its training set as label K
    without a K+1-th output (the objective decides what they mean, e.g. E2OAL's pseudo-classes);
    ``pool_sample`` adds that many unlabeled pool samples, drawn at random each round, as label K
    (BUAL's negative learning).
    """

    head: str | None = None
    head_kwargs: Mapping[str, Any] = field(default_factory=dict)
    objective: str | None = None
    objective_params: Mapping[str, Any] = field(default_factory=dict)
    train_overrides: Mapping[str, Any] = field(default_factory=dict)
    with_invalid: bool = False
    pool_sample: int = 0


Columns = tuple[str, ...] | Callable[[Any], tuple[str, ...]]
Networks = Mapping[str, NetworkOptions] | Callable[[Any], Mapping[str, NetworkOptions]]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function, the score columns and networks it needs, its parameters.

    ``params_type`` is the strategy's parameter dataclass (a ``osal_ray.params.Params``: its fields are
    the parameters, their defaults and their checks). ``columns`` and ``networks`` may depend on
    the resolved parameters (give a function of a ``params`` instance).
    """

    name: str
    fn: SelectFn
    columns: Columns
    needs_labeled: bool = False
    params_type: type[Params] = NoParams
    description: str = ""
    networks: Networks = field(default_factory=dict)
    job_defaults: Callable[[Any], Mapping[str, Any]] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter with its default value."""
        return self.params_type().to_dict()

    def params_from(self, config: Any) -> dict[str, Any]:
        """This strategy's parameters in an experiment config (unresolved): what the job's
        ``strategy_params`` give, over defaults that depend on the rest of the job (e.g. osal uses
        CLIPN purity when the job configures CLIP weights)."""
        derived = dict(self.job_defaults(config)) if self.job_defaults is not None else {}
        return {**derived, **config.strategy_params.get(self.name, {})}

    def resolve_params(self, params: "Mapping[str, Any] | Params | None") -> Params:
        """The typed parameters: ``params`` over the defaults, coerced and checked (InputError naming
        ``strategy_params.<name>.<key>`` for an unknown, mistyped or impossible value)."""
        return self.params_type.build(params, f"strategy_params.{self.name}")

    def required_columns(self, params: "Mapping[str, Any] | Params | None" = None) -> tuple[str, ...]:
        """The score columns this strategy needs with these parameters."""
        return self._columns_of(self.resolve_params(params))

    def _columns_of(self, resolved: Params) -> tuple[str, ...]:
        return tuple(self.columns(resolved)) if callable(self.columns) else tuple(self.columns)

    def network_options(self, params: "Mapping[str, Any] | Params | None" = None) -> dict[str, NetworkOptions]:
        """Per network, how this strategy wants it trained with these parameters."""
        return dict(self.networks(self.resolve_params(params))) if callable(self.networks) else dict(self.networks)

    def select(self, pool: PoolScores, budget: int, context: QueryContext) -> Selection:
        """Run the strategy and check its answer (unique, in range, at most ``budget``).

        ``context.params`` may be this strategy's resolved parameters (the loop passes the plan's) or
        a mapping (notebooks, tests), which is resolved here."""
        params = self.resolve_params(context.params)
        context = dataclasses.replace(context, params=params)
        missing = [c for c in self._columns_of(params) if c not in pool.columns]
        if missing:
            raise KeyError(f"strategy {self.name!r} needs score columns {missing}")
        if self.needs_labeled and context.labeled is None:
            raise ValueError(f"strategy {self.name!r} needs the labeled samples' scores")
        if budget < 0:
            raise ValueError("budget must be non-negative")
        if budget == 0 or len(pool) == 0:
            return Selection(np.empty(0, dtype=np.int64), np.empty(0), carry=context.carry)
        selection = self.fn(pool, budget, context)
        indices = np.asarray(selection.indices, dtype=np.int64)
        if len(indices) > budget:
            raise RuntimeError(f"strategy {self.name!r} returned {len(indices)} > budget {budget}")
        if len(np.unique(indices)) != len(indices):
            raise RuntimeError(f"strategy {self.name!r} returned repeated indices")
        if len(indices) and (indices.min() < 0 or indices.max() >= len(pool)):
            raise RuntimeError(f"strategy {self.name!r} returned indices outside the pool")
        return dataclasses.replace(selection, indices=indices, scores=np.asarray(selection.scores, dtype=np.float64))


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(
    name: str,
    *,
    columns: Columns,
    needs_labeled: bool = False,
    params: type[Params] = NoParams,
    networks: Networks | None = None,
    job_defaults: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[SelectFn], SelectFn]:
    """Register ``fn(pool, budget, context) -> Selection``; its docstring is its description.

    ``params`` is the parameter dataclass (defaults and checks in one place); ``networks`` says how
    the strategy wants networks trained (e.g. a detector with class weights, a classifier with a
    loss-prediction head); ``job_defaults(config)`` gives parameter values that follow from the
    rest of the job.
    """

    def register(fn: SelectFn) -> SelectFn:
        STRATEGIES.add(
            name,
            Strategy(
                name, fn, columns if callable(columns) else tuple(columns), needs_labeled, params,
                (fn.__doc__ or "").strip(), networks if networks is not None else {}, job_defaults,
            ),
        )
        return fn

    return register


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name`` (InputError listing the known ones otherwise)."""
    return STRATEGIES.get(name, "strategies")


def query(
    name: str,
    pool: PoolScores,
    budget: int,
    *,
    num_known: int,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    labeled: LabeledScores | None = None,
) -> Selection:
    """Front door for notebooks: run strategy ``name`` on arrays and return its Selection."""
    context = QueryContext(num_known=num_known, rng=np.random.default_rng(seed), params=params or {}, labeled=labeled)
    return get_strategy(name).select(pool, budget, context)


def top_k(scores: np.ndarray, k: int, candidates: np.ndarray | None = None, *, tiebreak: np.ndarray | None = None,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions of the ``k`` largest scores (optionally among ``candidates``), best first.

    Equal scores are ordered by the larger ``tiebreak`` (a secondary score over the whole pool,
    e.g. the MAV behind a saturated probability), then at random with ``rng``, and only then by
    position. Position alone is no tie-break for a real pool: thousands of probabilities
    saturate at 1.0, and pool order may follow the class folders. ``rng`` draws one number per
    pool row whatever the scores, so a seeded run stays reproducible. NaN ranks last;
    ``k <= 0`` gives none.
    """
    keys = rng.random(len(scores)) if rng is not None else None
    positions = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)[positions]
    values = np.where(np.isnan(values), -np.inf, values)  # NaN never outranks a real score
    k = min(k, len(positions))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(positions) // 4:
        # Partition first so that large pools are not fully sorted (every tie at the cut is kept).
        threshold = np.partition(values, len(values) - k)[len(values) - k]
        keep = values >= threshold
        positions, values = positions[keep], values[keep]
    # lexsort: the last key is primary -> descending score, descending tie-break, random, position.
    order_keys: list[np.ndarray] = [positions]
    if keys is not None:
        order_keys.append(keys[positions])
    if tiebreak is not None:
        secondary = np.asarray(tiebreak, dtype=np.float64)[positions]
        order_keys.append(-np.where(np.isnan(secondary), -np.inf, secondary))
    order_keys.append(-values)
    order = np.lexsort(tuple(order_keys))
    return positions[order[:k]]
