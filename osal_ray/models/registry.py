"""The model registry: ``register_model`` refuses duplicates, ``create_model`` is the front door.

A model takes either the stored ``image`` or another stored pool column (for instance a cached
CLIP image embedding) as its input; the registry records which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from osal_ray.errors import InputError
from osal_ray.models.base import FeatureNetwork
from osal_ray.registry import Registry

ModelFactory = Callable[..., FeatureNetwork]


@dataclass(frozen=True)
class ModelEntry:
    factory: ModelFactory
    input: str = "image"


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, input: str = "image") -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, in_channels, image_size, **kwargs) -> FeatureNetwork``.

    ``input`` names the stored pool column the model reads (``image`` unless it works on a
    cached feature such as ``clip_embedding``; then ``in_channels`` is that feature's size).
    """

    def register(factory: ModelFactory) -> ModelFactory:
        MODELS.add(name, ModelEntry(factory, input))
        return factory

    return register


def model_input(name: str, field: str = "model") -> str:
    """The stored pool column model ``name`` reads."""
    return MODELS.get(name, field).input


def create_model(
    name: str, num_classes: int, in_channels: int, image_size: int, field: str = "model", **kwargs: Any
) -> FeatureNetwork:
    """Build the registered model ``name``; unknown keyword arguments are an InputError."""
    entry = MODELS.get(name, field)
    try:
        return entry.factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except TypeError as exc:
        raise InputError(f"{field} kwargs", f"{name}: {exc}") from None
