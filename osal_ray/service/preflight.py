"""What the service checks before Ray starts: the job (exactly as a command-line run checks it) and
that no other process works in its output directory."""

from __future__ import annotations

import dataclasses

from osal_ray.config import ExperimentConfig, load_config
from osal_ray.errors import InputError


def check_service_config(config_path: str | None, overrides: list[str], output_dir: str | None) -> ExperimentConfig:
    """The job's config, checked (config, data, resume compatibility, Label Studio) without taking
    its output directory; InputError naming the key or file otherwise."""
    from osal_ray.experiment.preflight import check_config, check_data, check_resume
    from osal_ray.lock import OutputLock
    from osal_ray.sweep import is_sweep

    config = load_config(config_path, overrides)
    if output_dir:
        config = dataclasses.replace(config, output_dir=output_dir)
    if is_sweep(config):
        raise InputError("sweep", "the service runs one experiment; run sweeps with python -m osal_ray.run")
    plans = check_config(config)
    directory = config.resolved_output_dir().resolve()
    if directory.exists() and not directory.is_dir():
        raise InputError("--output-dir", f"{directory} exists and is not a directory")
    OutputLock.acquire(directory, purpose="osal_ray.serve (checking)").release()  # in use: say so now, by whom
    states = check_resume(config, plans)
    check_data(config, plans, states=states)
    return config
