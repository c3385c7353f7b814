"""CLIPN (CLIP that can say "no") and the VLPure open-set scores built on it.

Names are imported lazily, so ``osal_ray.clip.scores`` (pure numpy) does not pull in
torch/open_clip for callers that only score precomputed similarities.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CLIPN": "model",
    "NUM_NO_PROMPTS": "model",
    "LoadReport": "loading",
    "create_clipn": "loading",
    "check_clipn_weights": "loading",
    "clipn_tokenizer": "loading",
    "clipn_state_dict_from_clip": "loading",
    "save_clipn_checkpoint": "loading",
    "TEMPLATES": "prompts",
    "build_prompts": "prompts",
    "text_embeddings": "prompts",
    "preprocess_batch": "preprocess",
    "clip_image_settings": "preprocess",
    "clipn_probabilities": "scores",
    "atd_scores": "scores",
    "ctw_scores": "scores",
    "visual_weights": "scores",
    "class_mean_embeddings": "scores",
    "vlpure_decision": "scores",
    "tune_scale": "scores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
