"""Class-name prompts and the per-class text embeddings of both CLIPN towers.

Each template has one ``{}`` for the class phrase. With a domain (VLPure's DomainNet
setting) the class phrase becomes ``"{domain} {class}"``, so the base template reads
"a photo of a {domain} {class}." and every other template turns domain-aware the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from osal_ray.clip.model import CLIPN
from osal_ray.errors import InputError

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a sharp photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a snapshot of a {}.",
    "a {} in the scene.",
    "there is a {} in this picture.",
    "a good example of a {}.",
    "an unusual {}.",
)


def class_phrase(class_name: str, domain: str | None = None) -> str:
    """The phrase a template's ``{}`` receives: underscores become spaces, the domain goes first."""
    name = " ".join(class_name.replace("_", " ").split())
    return f"{' '.join(domain.replace('_', ' ').split())} {name}" if domain else name


def build_prompts(
    class_names: Sequence[str], domain: str | None = None, templates: Sequence[str] | None = None
) -> list[list[str]]:
    """Per class, its prompts: every template filled with the (domain-aware) class phrase."""
    templates = TEMPLATES if templates is None else tuple(templates)
    if not templates:
        raise InputError("clip.templates", "needs at least one template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise InputError("clip.templates", f"each template needs exactly one '{{}}', got {bad[:3]}")
    if len(class_names) == 0 or any(not str(c).strip() for c in class_names):
        raise InputError("data.class_names", "needs at least one non-empty class name")
    return [[t.format(class_phrase(str(c), domain)) for t in templates] for c in class_names]


@torch.inference_mode()
def text_embeddings(
    model: CLIPN,
    tokenizer: Callable[[list[str]], torch.Tensor] | Any,
    class_names: Sequence[str],
    domain: str | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class yes and no text embeddings, each ``[K, D]`` float32 with unit rows.

    A class's embedding is the mean over templates of the normalised prompt embeddings,
    normalised again (the usual CLIP prompt ensemble), for each tower separately.
    """
    prompts = build_prompts(class_names, domain, templates)
    flat = [p for per_class in prompts for p in per_class]
    device = next(model.parameters()).device
    yes_parts, no_parts = [], []
    for start in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[start : start + batch_size]).to(device)
        yes_parts.append(model.encode_text(tokens, normalize=True).float())
        no_parts.append(model.encode_text_no(tokens, normalize=True).float())
    k, t = len(prompts), len(prompts[0])
    return _ensemble(torch.cat(yes_parts), k, t), _ensemble(torch.cat(no_parts), k, t)


def _ensemble(embeddings: torch.Tensor, num_classes: int, num_templates: int) -> np.ndarray:
    mean = embeddings.reshape(num_classes, num_templates, -1).mean(dim=1)
    return F.normalize(mean, dim=-1).cpu().numpy().astype(np.float32)
