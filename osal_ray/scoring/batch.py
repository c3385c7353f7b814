"""One batch of pool rows -> its score columns: what every scoring actor runs, in either mode.

The streaming pass (``osal_ray.scoring.pool_pass``) hands it Ray Data batches; the resident
scorers (``osal_ray.scoring.resident``) slices of the shard they hold. Both load the round's
networks from checkpoint paths, never from weights shipped by the driver, so an actor that Ray
restarts elsewhere rebuilds itself.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from osal_ray.scoring.columns import ColumnInputs, ScoreColumn, networks_for, stored_columns_for
from osal_ray.strategies.base import PoolScores


class RoundNetworks:
    """The networks a set of columns needs, loaded from the round's checkpoints onto a device.

    :meth:`load` reuses each module and only reads new weights when a checkpoint path changes
    (one new checkpoint per network per round).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._loaded: dict[str, tuple[str, torch.nn.Module, str]] = {}  # name -> (path, model, input column)

    def load(self, checkpoints: Mapping[str, str], columns: list[str]) -> dict[str, tuple[torch.nn.Module, str]]:
        """name -> (model in eval mode on the device, the stored column it reads), for ``columns``."""
        from osal_ray.training.checkpoints import load_network_anywhere

        wanted = sorted(networks_for(columns))
        for name in wanted:
            path = checkpoints[name]
            cached = self._loaded.get(name)
            if cached is not None and cached[0] == path:
                continue
            model, spec = load_network_anywhere(path)  # a fresh module: another network spec may share the name
            self._loaded[name] = (path, model.eval().to(self.device), spec.input)
        return {name: self._loaded[name][1:] for name in wanted}


def score_batch(
    columns: list[ScoreColumn],
    networks: Mapping[str, tuple[torch.nn.Module, str]],
    model_input: Callable[[str], torch.Tensor],
    context: Mapping[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """The ``columns`` (from ``COLUMNS``) of one batch. ``model_input(column)`` gives a stored column
    of the batch as the networks' input tensor on their device (the normalised image, or a vector)."""
    with torch.inference_mode():
        inputs = ColumnInputs(
            outputs={name: model.forward_all(model_input(column)) for name, (model, column) in networks.items()},
            stored={name: model_input(name) for name in sorted(stored_columns_for(c.name for c in columns))},
            context=context,
        )
        result = {}
        for column in columns:
            values = column.compute(inputs)
            result[column.name] = (values if values.dtype == torch.int64 else values.float()).cpu().numpy()
    return result


def gather_scores(parts: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str]) -> PoolScores:
    """The pool's scores from parts that each hold ``id`` and ``columns``, in any order: rows sorted by id."""
    ids = np.concatenate([part["id"] for part in parts])
    order = np.argsort(ids, kind="stable")
    return PoolScores(ids[order], {name: np.concatenate([part[name] for part in parts])[order] for name in columns})
