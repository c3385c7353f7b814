"""Optional dependencies (pip extras): checked before a job that needs one starts any work.

``open_clip_torch`` (``osal_ray[clip]``) is needed wherever CLIP embeddings are scored (VLPure-AL,
MQNet's and osal's CLIPN purity); ``optuna`` (``osal_ray[optuna]``) by ``sweep.searcher: optuna``.
"""

from __future__ import annotations

import importlib

from osal_ray.errors import InputError

EXTRAS: dict[str, str] = {"open_clip": "clip", "optuna": "optuna", "label_studio_sdk": "label-studio"}


def require_extra(module: str, field: str, needed_by: str) -> None:
    """Raise InputError on ``field`` when ``module`` cannot be imported, naming the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS[module]
        raise InputError(field, f"{needed_by} needs the {module} package, which is not installed "
                                f"({error}); install it with: pip install 'osal_ray[{extra}]'") from None
