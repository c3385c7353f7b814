"""FINCH clustering (Sarfraz et al., CVPR 2019) through the maintained ``finch-clust`` package,
with the small-sample cases handled (EOAL clusters a few queried unknowns)."""

from __future__ import annotations

import warnings

import numpy as np


def finch_clusters(features: np.ndarray, requested: int) -> np.ndarray:
    """Cluster labels 0..C-1 for each row, with C = ``requested`` clusters when FINCH can reach it.

    Fewer rows than ``requested``: every row is its own cluster. FINCH builds a hierarchy of
    partitions and, asked for ``requested`` clusters, merges its last level down to that number.
    """
    n = len(features)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if n <= max(requested, 2):
        return np.arange(n, dtype=np.int64)
    _, _, labels = _finch(features, requested)
    return _relabel(labels)


def finch_partition_at_most(features: np.ndarray, limit: int) -> np.ndarray:
    """The finest FINCH partition with at most ``limit`` clusters (EOAL's diversity step)."""
    n = len(features)
    if n <= 2:
        return np.zeros(n, dtype=np.int64)
    partitions, counts, _ = _finch(features)
    level = next((i for i, count in enumerate(counts) if count <= limit), len(counts) - 1)
    return _relabel(partitions[:, level])


# finch-clust computes first neighbours exactly up to this many samples (an n x n matrix) and needs an
# optional ANN package above it; above it the exact first neighbours are computed here, in chunks.
EXACT_LIMIT = 20_000


def _finch(features: np.ndarray, requested: int | None = None):
    data = np.asarray(features, dtype=np.float32)
    # Above the limit finch-clust applies no early-exit distance (as on its ANN paths); the neighbours are exact.
    initial = first_neighbours(data) if len(data) > EXACT_LIMIT else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # finch-clust warns that the optional pynndescent is absent
        from finch import FINCH

        return FINCH(data, req_clust=requested, initial_rank=initial, ann_threshold=EXACT_LIMIT, verbose=False)


def first_neighbours(features: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Each row's nearest other row by cosine distance (the first index on a tie), in row chunks."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    nearest = np.empty(len(unit), dtype=np.int32)
    for start in range(0, len(unit), chunk):
        similarity = unit[start:start + chunk] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, start + rows] = -np.inf
        nearest[start:start + chunk] = np.argmax(similarity, axis=1)
    return nearest


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, dense = np.unique(np.asarray(labels).ravel(), return_inverse=True)
    return dense.astype(np.int64)


def cluster_centres(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean feature of each cluster label 0..C-1."""
    count = int(labels.max()) + 1 if len(labels) else 0
    return np.stack([features[labels == c].mean(axis=0) for c in range(count)]) if count else features[:0]
