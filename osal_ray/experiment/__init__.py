"""The active-learning loop: oracle, round state, metrics, trajectories and outputs."""

from osal_ray.experiment.runner import PreparedExperiment, prepare_experiment, run_experiment

__all__ = ["PreparedExperiment", "prepare_experiment", "run_experiment"]
