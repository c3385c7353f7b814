"""Which networks a run trains each round, on which samples, with which objective.

- ``classifier``: K outputs, the known labeled samples, cross-entropy (or the strategy's
  objective, e.g. learning loss); its test accuracy is the run's accuracy.
- ``detector``: K+1 outputs, the known samples plus the invalid (queried unknown) ones as
  class K, cross-entropy on logits / ``detector.temperature`` weighted as
  ``detector.class_weights`` says (``auto``: the method's own choice) or the strategy's
  objective (EOAL).
- ``ssl``: a self-supervised encoder, trained once in round 0 on every pool sample (labels unused).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from osal_ray.config import ExperimentConfig, TrainConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.models import model_input
from osal_ray.scoring import networks_for
from osal_ray.strategies import NetworkOptions, Strategy
from osal_ray.training.checkpoints import NetworkSpec


@dataclass(frozen=True)
class NetworkPlan:
    """How one network is trained: its spec, its objective, and which samples it learns from."""

    name: str
    spec: NetworkSpec
    train: TrainConfig
    objective: str = "cross_entropy"
    objective_params: dict[str, Any] = field(default_factory=dict)
    include_invalid: bool = False
    evaluate: bool = False
    once: bool = False
    whole_pool: bool = False

    def training_set(self, labeled_ids: list[int], labeled_labels: list[int], invalid_ids: list[int], num_known: int,
                     pool_ids: Callable[[], np.ndarray]) -> tuple[list[int], list[int]]:
        """(ids, labels) to train on: known samples as 0..K-1, invalid ones as K if included,
        or every pool sample (label 0, unused; ``pool_ids`` is called only then) for a self-supervised network."""
        if self.whole_pool:
            ids = pool_ids()
            return ids.tolist(), [0] * len(ids)
        if not self.include_invalid:
            return list(labeled_ids), list(labeled_labels)
        return list(labeled_ids) + list(invalid_ids), list(labeled_labels) + [num_known] * len(invalid_ids)


def plan_networks(config: ExperimentConfig, manifest: PoolManifest, strategy: Strategy) -> list[NetworkPlan]:
    """The networks ``strategy``'s score columns need, plus the classifier (what accuracy measures)."""
    params = strategy.params_from(config)
    names = networks_for(strategy.required_columns(params)) | {"classifier"}
    options = strategy.network_options(params)
    unknown = sorted(names - {"classifier", "detector", "ssl"})
    if unknown:
        raise ValueError(f"no training plan for networks {unknown}")
    k = manifest.num_known
    model = config.model
    plans = [_plan("classifier", _spec(model.classifier, k, manifest, model.kwargs), config.train, options, evaluate=True)]
    if "detector" in names:
        own = dict(options.get("detector", NetworkOptions()).objective_params)
        weighting = config.detector.class_weights
        own["temperature"] = config.detector.temperature
        own["class_weight_reduction"] = config.detector.class_weight_reduction
        own["class_weights"] = own.get("class_weights", "none") if weighting == "auto" else weighting
        spec = _spec(model.detector or model.classifier, k + 1, manifest, model.kwargs)
        plans.append(_plan("detector", spec, config.train, options, objective_params=own, include_invalid=True))
    if "ssl" in names:
        spec = _spec(model.classifier, 1, manifest, model.kwargs)
        plans.append(_plan("ssl", spec, config.train, options, once=True, whole_pool=True))
    return plans


def _plan(name: str, spec: NetworkSpec, train: TrainConfig, options: dict[str, NetworkOptions],
          objective_params: dict[str, Any] | None = None, **flags: Any) -> NetworkPlan:
    """A plan with the strategy's head, objective and overrides; ``objective_params``, when given,
    are already resolved against the config and replace the strategy's own."""
    own = options.get(name, NetworkOptions())
    if own.head is not None:
        spec = dataclasses.replace(spec, head=own.head, head_kwargs=dict(own.head_kwargs))
    params = dict(own.objective_params) if objective_params is None else objective_params
    return NetworkPlan(
        name,
        spec,
        dataclasses.replace(train, **dict(own.train_overrides)),
        objective=own.objective or "cross_entropy",
        objective_params=params,
        **flags,
    )


def _spec(model: str, outputs: int, manifest: PoolManifest, kwargs: dict[str, Any]) -> NetworkSpec:
    """A network reading the model's input column (the image, or a cached feature) of this pool."""
    column = model_input(model)
    channels, side = manifest.input_size(column)
    return NetworkSpec(model, outputs, channels, side, dict(kwargs), input=column)


def network_seed(seed: int, round_index: int, network_index: int) -> int:
    """A distinct, reproducible torch seed per (run seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, network_index]).generate_state(1)[0])
