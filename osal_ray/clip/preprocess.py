"""Batched, torch-only CLIP image preprocessing for uint8 NHWC arrays.

Mirrors open_clip's eval transform for ``resize_mode="shortest"``: bicubic resize of the
shorter side to the target, center crop, scale to [0, 1], normalise. Torch's antialiased
bicubic matches PIL's filter, so results agree with the PIL pipeline up to PIL's uint8
rounding of the resized image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import get_model_preprocess_cfg

from osal_ray.errors import InputError


def preprocess_batch(
    images_uint8_nhwc: np.ndarray,
    image_size: int | tuple[int, int],
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[N, H, W, C]`` (C in 1, 3) or ``[N, H, W]`` uint8 images -> normalised float ``[N, 3, S, S]``.

    With ``device`` (a GPU), the uint8 batch moves there first and the resize runs there: a quarter
    of the bytes of the float batch cross the bus, and the GPU does the interpolation.

    Grayscale is repeated to three channels. Each image is resized (bicubic, antialiased)
    so its shorter side is ``image_size``, center-cropped, scaled to [0, 1] and normalised
    as ``(x - mean) / std`` per channel.
    """
    arr = np.asarray(images_uint8_nhwc)
    if arr.dtype != np.uint8:
        raise InputError("images", f"need dtype uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
        raise InputError("images", f"need shape [N, H, W] or [N, H, W, 1|3], got {list(np.shape(images_uint8_nhwc))}")
    th, tw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if th / h >= tw / w:
        nh, nw = th, max(tw, int(w * th / h))
    else:
        nh, nw = max(th, int(h * tw / w)), tw
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clips to the uint8 range
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    x = x[:, :, top : top + th, left : left + tw]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


def clip_image_settings(model: Any) -> tuple[int | tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """``(image_size, mean, std)`` of an open_clip CLIP or a CLIPN, from its visual preprocess config."""
    cfg = get_model_preprocess_cfg(model)
    size = cfg.get("size", getattr(getattr(model, "visual", model), "image_size", 224))
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
    mean = tuple(float(v) for v in cfg.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", OPENAI_DATASET_STD))
    return size, mean, std
