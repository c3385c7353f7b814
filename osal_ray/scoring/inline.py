"""Inline scoring: the trajectory's own process scores the pool, with no scoring actor at all.

For small heads on frozen features (``features.extractor``) a pass over the whole pool is a few
matrix products, milliseconds, while starting a resident scorer costs a process and seconds, once
per trajectory. ``scoring.mode: inline`` holds the pool's stored columns in the process that runs
the trajectory (read once, kept while it scores the same pool) and scores them with the code every
scorer runs (``ShardScorer`` on one shard of the whole pool), on the process's own torch threads.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from osal_ray.data.pool import PoolManifest, pool_paths
from osal_ray.scoring.batch import gather_scores
from osal_ray.scoring.resident import ShardScorer, plan_shards
from osal_ray.strategies.base import PoolScores

# One pool per process: the one its trajectory scores now.
_HELD: dict[tuple, ShardScorer] = {}


def score_inline(manifest: PoolManifest, stored: frozenset[str], checkpoints: Mapping[str, str], columns: list[str],
                 context: Mapping[str, np.ndarray], batch_size: int) -> PoolScores:
    """Every pool row's ``columns`` (ids sorted), scored in this process."""
    import torch

    key = (manifest.directory, manifest.fingerprint, stored)
    scorer = _HELD.get(key)
    if scorer is None:
        _HELD.clear()
        segments = plan_shards(pool_paths(manifest), 1)[0]
        scorer = _HELD[key] = ShardScorer(manifest.to_dict(), segments, sorted(stored), use_gpu=False,
                                          threads=torch.get_num_threads())
    part = scorer.score(dict(checkpoints), list(columns), {k: np.asarray(v) for k, v in context.items()}, batch_size)
    return gather_scores([part], columns)
