"""Scoring the pool: the column registry and the Ray Data actor-pool pass."""

from osal_ray.scoring.columns import COLUMNS, NetworkOutput, ScoreColumn, networks_for, register_column
from osal_ray.scoring.pool_pass import PoolScorer, score_pool

__all__ = ["COLUMNS", "NetworkOutput", "PoolScorer", "ScoreColumn", "networks_for", "register_column", "score_pool"]
