"""Scoring the pool: the column registry and the Ray Data actor-pool pass."""

from osal_ray.scoring import clip  # noqa: F401  (register the CLIP columns and context)
from osal_ray.scoring.columns import (
    COLUMNS,
    ColumnInputs,
    ScoreColumn,
    context_for,
    networks_for,
    register_column,
    stored_columns_for,
)
from osal_ray.scoring.pool_pass import PoolScorer, score_pool

__all__ = [
    "COLUMNS",
    "ColumnInputs",
    "PoolScorer",
    "ScoreColumn",
    "context_for",
    "networks_for",
    "register_column",
    "score_pool",
    "stored_columns_for",
]
