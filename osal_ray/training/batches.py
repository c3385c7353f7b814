"""Mini-batches of one epoch: shuffled, split evenly, the same number on every worker.

A plain ``DataLoader(batch_size=64)`` ends an epoch of 65 samples with a batch of one. With
BatchNorm that batch is normalised by its own statistics (a single image's per-channel mean and
variance) and its update drags the running statistics far off: measured on Fashion-MNIST, every
round whose labeled set had ``n mod 64`` in 1..5 collapsed to 0.25-0.33 accuracy. Here the
remainder is folded into the other batches instead: an epoch has ``round(n / batch_size)``
batches (at least one) of sizes that differ by at most one, so every batch holds between half
and one and a half times ``batch_size`` samples, and no sample is dropped.
"""

from __future__ import annotations

import math

import torch


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch for ``n`` samples: round(n / batch_size), at least one."""
    return max(1, int(math.floor(n / batch_size + 0.5)))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This worker's index batches for one epoch.

    One permutation of ``0..n-1`` is drawn from ``generator`` (every worker holds a generator
    seeded alike, so every worker draws the same one); with several workers it is padded by
    wrapping around to a multiple of ``world`` and dealt out, so that every worker runs the
    same number of steps (DistributedDataParallel synchronises on each one).
    """
    if n <= 0:
        return []
    order = torch.randperm(n, generator=generator)
    if world > 1:
        padded = math.ceil(n / world) * world
        order = order.repeat(math.ceil(padded / n))[:padded][rank::world]
    return list(torch.tensor_split(order, num_batches(len(order), batch_size)))
