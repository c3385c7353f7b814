"""The model registry: ``register_model`` refuses duplicates, ``create_model`` is the front door."""

from __future__ import annotations

from typing import Any, Callable

from osal_ray.errors import InputError
from osal_ray.models.base import FeatureNetwork
from osal_ray.registry import Registry

ModelFactory = Callable[..., FeatureNetwork]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, in_channels, image_size, **kwargs) -> FeatureNetwork``."""
    return MODELS.decorator(name)


def create_model(
    name: str, num_classes: int, in_channels: int, image_size: int, field: str = "model", **kwargs: Any
) -> FeatureNetwork:
    """Build the registered model ``name``; unknown keyword arguments are an InputError."""
    factory = MODELS.get(name, field)
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except TypeError as exc:
        raise InputError(f"{field} kwargs", f"{name}: {exc}") from None
