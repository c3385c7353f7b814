"""Networks behind one registry: ``create_model(name, num_classes, in_channels, image_size)``."""

from osal_ray.models import cnn, mlp, resnet  # noqa: F401  (register the built-in models)
from osal_ray.models.base import FeatureNetwork
from osal_ray.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "FeatureNetwork", "create_model", "register_model"]
