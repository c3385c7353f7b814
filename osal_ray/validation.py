"""Checks of a loaded configuration, all before any data is read or Ray starts: each section checks its
own keys (``check`` in ``osal_ray.config``); this module adds what needs the registries above the config.

Each failure is an InputError that names the dotted config key and what is allowed.
"""

from __future__ import annotations


from osal_ray.annotation import annotator_backend, oracle_kinds
from osal_ray.config import ExperimentConfig
from osal_ray.errors import InputError, require, shown


def validate_config(config: ExperimentConfig) -> None:
    """Raise InputError for the first impossible or unknown value in ``config``: every section's own
    checks (``ExperimentConfig.check``), then the names that live in registries."""
    from osal_ray.data import DATASETS
    from osal_ray.models import MODELS
    from osal_ray.strategies import STRATEGIES

    config.check()
    require(bool(config.strategies), "strategies", f"give at least one of: {', '.join(STRATEGIES.names())}")
    for name in config.strategies:
        STRATEGIES.get(name, "strategies")
    DATASETS.get(config.data.dataset, "data.dataset")
    kinds = oracle_kinds()
    require(config.oracle.kind in kinds, "oracle.kind", f"{shown(config.oracle.kind)} is not one of {', '.join(kinds)}")
    annotator_backend(config).validate(config)
    for field, name in (("model.classifier", config.model.classifier), ("model.detector", config.model.detector)):
        if name is not None:
            _check_model_kwargs(MODELS.get(name, field).factory, name, config.model.kwargs)
    _check_features(config)


def _check_model_kwargs(factory, name: str, kwargs: dict) -> None:
    """``model.kwargs`` are keyword arguments of the model's constructor (before Ray, not at training)."""
    import inspect

    try:
        inspect.signature(factory).bind(num_classes=2, in_channels=1, image_size=8, **kwargs)
    except TypeError as exc:
        raise InputError("model.kwargs", f"{name} takes no such argument ({exc}); its arguments: "
                                         f"{', '.join(list(inspect.signature(factory).parameters)[3:]) or 'none'}") from None


def _check_features(config: ExperimentConfig) -> None:
    """An extractor that exists with valid parameters, and models that read what it writes (and only then)."""
    from osal_ray.features import extractor_params
    from osal_ray.models import model_input
    from osal_ray.data.vector_store import FEATURES

    models = {"model.classifier": config.model.classifier}
    if config.model.detector is not None:
        models["model.detector"] = config.model.detector
    if config.features.extractor is None:
        for field, name in models.items():
            require(model_input(name, field) != FEATURES, field,
                    f"{name} is a head on frozen features: set features.extractor (e.g. pixels or clip)")
        return
    extractor_params(config)
    for field, name in models.items():
        require(model_input(name, field) == FEATURES, field,
                f"{name} reads {model_input(name, field)!r}, not the features of features.extractor "
                f"{config.features.extractor}: use linear or mlp_head (or features.extractor: null)")
