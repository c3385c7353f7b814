"""Query strategies: pure numpy functions of score arrays behind one registry.

Call one from a notebook with ``query(name, PoolScores(ids, {...}), budget, num_known=K)``.
"""

from osal_ray.strategies import badge, bual, coreset, e2oal, eaoa, eoal, learning_loss, mqnet, open_set, osal, standard, vlpure  # noqa: F401  (register the built-in strategies)
from osal_ray.strategies.base import (
    STRATEGIES,
    LabeledScores,
    NetworkOptions,
    PoolScores,
    QueryContext,
    Selection,
    Strategy,
    get_strategy,
    query,
    register_strategy,
    top_k,
)

__all__ = [
    "STRATEGIES",
    "LabeledScores",
    "NetworkOptions",
    "PoolScores",
    "QueryContext",
    "Selection",
    "Strategy",
    "get_strategy",
    "query",
    "register_strategy",
    "top_k",
]
