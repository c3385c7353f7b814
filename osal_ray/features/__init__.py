"""Frozen feature extractors (``features.extractor``): images in, one vector per sample out, computed once.

With an extractor the classifier and the K+1 detector are small heads (``model.classifier: linear`` or
``mlp_head``) on the stored ``features`` column instead of networks on images: the regime practitioners
label real data in, whose rounds retrain in seconds and whose seed noise is small enough to tell methods
apart. One registry, one file per extractor: ``pixels`` (flattened, PCA-whitened; no training),
``clip`` (the CLIP image tower) and ``simclr`` (a self-supervised encoder trained once on the pool's
images). ``ensure_features`` computes and stores the column.
"""

from osal_ray.features import clip, pixels, simclr  # noqa: F401  (each registers its extractor)
from osal_ray.features.base import EXTRACTORS, FeatureExtractor, register_extractor
from osal_ray.features.store import ensure_features, extractor_params, features_identity

__all__ = ["EXTRACTORS", "FeatureExtractor", "ensure_features", "extractor_params", "features_identity", "register_extractor"]
