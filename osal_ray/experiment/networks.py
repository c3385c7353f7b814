"""Which networks a strategy trains each round, on which samples, with which objective.

- ``classifier``: K outputs, the known labeled samples, cross-entropy (or the strategy's
  objective, e.g. learning loss); its test accuracy is the run's accuracy.
- ``detector``: K+1 outputs, the known samples plus the invalid (queried unknown) ones as
  class K, cross-entropy on logits / ``detector.temperature`` weighted as
  ``detector.class_weights`` says (``auto``: the method's own choice) or the strategy's
  objective (EOAL).
- ``ssl``: a self-supervised encoder, trained once in round 0 on every pool sample (labels unused).
- ``negative``: a second K-way network (BUAL's negative learning), on the known samples and, as
  the strategy asks, a random sample of the unlabeled pool.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from osal_ray.config import ExperimentConfig
from osal_ray.errors import InputError
from osal_ray.models import model_input
from osal_ray.strategies import NetworkOptions
from osal_ray.training.objectives import OBJECTIVES
from osal_ray.training.recipe import NetworkRecipe

NETWORKS = ("classifier", "detector", "ssl", "negative")


def network_recipes(config: ExperimentConfig, strategy_name: str, names: set[str],
                    options: Mapping[str, NetworkOptions]) -> tuple[NetworkRecipe, ...]:
    """The recipes of the networks ``names`` (the classifier always: it is what accuracy measures),
    with the strategy's heads, objectives and overrides over the job's ``model``, ``train`` and
    ``detector`` settings. Objective parameters are typed and checked here, once."""
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown:
        raise ValueError(f"no training plan for networks {unknown}")
    model = config.model
    recipes = [_recipe(config, strategy_name, "classifier", model.classifier, options, evaluate=True)]
    if "detector" in names:
        own = dict(options.get("detector", NetworkOptions()).objective_params)
        detector = config.detector
        weighting = own.get("class_weights", "none") if detector.class_weights == "auto" else detector.class_weights
        job_owned = {"temperature": detector.temperature}
        if (options.get("detector", NetworkOptions()).objective or "cross_entropy") == "cross_entropy":
            job_owned.update(class_weights=weighting, class_weight_reduction=detector.class_weight_reduction)
        recipes.append(_recipe(config, strategy_name, "detector", model.detector or model.classifier, options,
                               job_owned=job_owned, include_invalid=True))
    if "ssl" in names:
        recipes.append(_recipe(config, strategy_name, "ssl", model.classifier, options, once=True, whole_pool=True))
    if "negative" in names:
        recipes.append(_recipe(config, strategy_name, "negative", model.classifier, options))
    return tuple(recipes)


def _recipe(config: ExperimentConfig, strategy_name: str, name: str, model: str, options: Mapping[str, NetworkOptions],
            job_owned: Mapping[str, Any] | None = None, **flags: Any) -> NetworkRecipe:
    """One recipe: the strategy's head, objective (its parameters, then the job's own knobs over
    them) and training overrides."""
    own = options.get(name, NetworkOptions())
    objective = own.objective or "cross_entropy"
    raw = {**dict(own.objective_params), **dict(job_owned or {})}
    objective_type = OBJECTIVES.get(objective, f"{name} objective")
    params = objective_type.params_type.build(raw, f"strategy_params.{strategy_name}")
    if objective_type.needs_images and model_input(model) != "image":
        field = "model.classifier" if name != "detector" or not config.model.detector else "model.detector"
        raise InputError(field, f"{strategy_name}'s {name} network is trained with {objective}, which needs image inputs; "
                                f"{model!r} reads the cached column {model_input(model)!r}")
    return NetworkRecipe(
        name,
        model,
        dict(config.model.kwargs),
        dataclasses.replace(config.train, **dict(own.train_overrides)),
        head=own.head,
        head_kwargs=dict(own.head_kwargs),
        objective=objective,
        objective_params=params,
        with_invalid=own.with_invalid,
        pool_sample=own.pool_sample,
        **flags,
    )


def network_seed(seed: int, round_index: int, network_index: int) -> int:
    """A distinct, reproducible torch seed per (run seed, round, network)."""
    return int(np.random.SeedSequence([seed, round_index, network_index]).generate_state(1)[0])
