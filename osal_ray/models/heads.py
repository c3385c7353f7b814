"""Heads that wrap a backbone and add outputs beside its logits (learning loss, one-vs-all, ...).

A head is registered as ``factory(backbone, **kwargs) -> nn.Module`` whose ``forward_all``
returns a NetworkOutput with its extra outputs in ``extras``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from osal_ray.models.base import FeatureNetwork
from osal_ray.registry import Registry

HeadFactory = Callable[..., nn.Module]
HEADS: Registry[HeadFactory] = Registry("network head")


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Register ``factory(backbone: FeatureNetwork, **kwargs) -> nn.Module``."""
    return HEADS.decorator(name)


def attach_head(name: str, backbone: FeatureNetwork, **kwargs: Any) -> nn.Module:
    """Wrap ``backbone`` in the registered head ``name``."""
    return HEADS.get(name, "network head")(backbone, **kwargs)
