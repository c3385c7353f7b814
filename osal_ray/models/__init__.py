"""Networks behind one registry: ``create_model(name, num_classes, in_channels, image_size)``."""

from osal_ray.models import clip_linear, cnn, heads_on_features, mlp, resnet  # noqa: F401  (register the built-in models)
from osal_ray.models.base import FeatureNetwork, NetworkOutput
from osal_ray.models.registry import MODELS, create_model, model_input, register_model

__all__ = ["MODELS", "FeatureNetwork", "NetworkOutput", "create_model", "model_input", "register_model"]
