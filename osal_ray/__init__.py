"""osal_ray: open-set active learning (JSOSAL, VLPure-AL, LfOSA and the baselines) on Ray."""

__version__ = "0.1.0"
