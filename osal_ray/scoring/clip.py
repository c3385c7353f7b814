"""CLIPN in the scoring pass: the VLPure similarity columns and the context they read.

Each pool row carries its CLIP image embedding (the ``clip_embedding`` column that
``osal_ray.data.clip_store`` materialises once per job). The VLPure columns are cosine
similarities of it to per-class text embeddings (computed once per job on the driver) and to
the class means of the labeled known samples (recomputed each round).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from osal_ray.config import ExperimentConfig
from osal_ray.data.clip_store import EMBEDDING, clip_key, load_clipn
from osal_ray.data.pool import PoolManifest, decode_vectors, pool_paths, read_labeled
from osal_ray.scoring.columns import ColumnInputs, register_column
from osal_ray.scoring.context import ScoringState, register_context

_TEXT_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def text_embeddings_for(config: ExperimentConfig, manifest: PoolManifest) -> tuple[np.ndarray, np.ndarray]:
    """Per known class, the yes- and no-tower text embeddings of its prompts; once per job (cached on disk)."""
    from osal_ray.clip import clipn_tokenizer, text_embeddings

    clip = config.clip
    names = list(manifest.known_class_names())
    key = hashlib.sha256(json.dumps([clip_key(clip), names, clip.domain, clip.templates]).encode()).hexdigest()[:12]
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    path = Path(manifest.directory) / f"clip_text_{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            _TEXT_CACHE[key] = (cached["yes"], cached["no"])
            return _TEXT_CACHE[key]
    model = load_clipn(clip)
    yes, no = text_embeddings(model, clipn_tokenizer(model), names, domain=clip.domain, templates=clip.templates)
    np.savez(path, yes=yes, no=no)
    _TEXT_CACHE[key] = (yes, no)
    return yes, no


@register_context("clip_text_yes")
def _text_yes(state: ScoringState) -> np.ndarray:
    return text_embeddings_for(state.config, state.manifest)[0]


@register_context("clip_text_no")
def _text_no(state: ScoringState) -> np.ndarray:
    return text_embeddings_for(state.config, state.manifest)[1]


@register_context("clip_class_means")
def _class_means(state: ScoringState) -> np.ndarray:
    """Per known class, the normalised mean CLIP embedding of its labeled samples (VLPure Eq. 5)."""
    from osal_ray.clip import class_mean_embeddings

    table, labels = read_labeled(pool_paths(state.manifest), EMBEDDING, state.labeled_ids, state.labeled_labels)
    embeddings = decode_vectors(table.column(EMBEDDING), state.manifest.vector_columns[EMBEDDING])
    return class_mean_embeddings(embeddings, labels, state.manifest.num_known).astype(np.float32)


def _cosine(inputs: ColumnInputs, context: str) -> torch.Tensor:
    embedding = torch.nn.functional.normalize(inputs.stored[EMBEDDING].float(), dim=1)
    return embedding @ inputs.context[context].float().T


@register_column("clip_cos_yes", "cosine of the CLIP image embedding with each known class's yes-tower text embedding, (N, K)",
                 reads=(EMBEDDING,), context=("clip_text_yes",))
def _clip_cos_yes(inputs: ColumnInputs) -> torch.Tensor:
    return _cosine(inputs, "clip_text_yes")


@register_column("clip_cos_no", "cosine of the CLIP image embedding with each known class's no-tower text embedding, (N, K)",
                 reads=(EMBEDDING,), context=("clip_text_no",))
def _clip_cos_no(inputs: ColumnInputs) -> torch.Tensor:
    return _cosine(inputs, "clip_text_no")


@register_column("clip_cos_visual", "cosine of the CLIP image embedding with each known class's labeled mean embedding, (N, K)",
                 reads=(EMBEDDING,), context=("clip_class_means",))
def _clip_cos_visual(inputs: ColumnInputs) -> torch.Tensor:
    return _cosine(inputs, "clip_class_means")
