"""Training on Ray Train: the per-worker loop, the driver call, checkpoints and losses."""

from osal_ray.training.checkpoints import NetworkSpec, load_network, save_network
from osal_ray.training.fit import FitResult, fit_network
from osal_ray.training.losses import inverse_frequency_weights, temperature_cross_entropy
from osal_ray.training.worker import TrainJob, train_loop_per_worker

__all__ = [
    "FitResult",
    "NetworkSpec",
    "TrainJob",
    "fit_network",
    "inverse_frequency_weights",
    "load_network",
    "save_network",
    "temperature_cross_entropy",
    "train_loop_per_worker",
]
