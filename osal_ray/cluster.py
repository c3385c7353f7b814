"""Joining a Ray cluster, or starting an embedded one on a laptop."""

from __future__ import annotations

import logging
import os

from osal_ray.config import RayConfig


def connect_ray(config: RayConfig) -> None:
    """Join ``ray.address`` / ``RAY_ADDRESS`` (set by ``ray job submit``) or start Ray locally."""
    import ray

    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            # address="local": a new embedded Ray even if another cluster is recorded on this
            # machine (a plain ray.init() would join the last `ray start` head, if any).
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory_mb * 1024 * 1024,
                include_dashboard=False,
            )
    configure_ray_data()


def configure_ray_data() -> None:
    """Ray Data settings for every pass: our own progress lines replace bars and INFO lines."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
