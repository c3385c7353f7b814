"""Who labels a run's queries: the label codes and annotator contract, label files and staging, the
run's secret, and the annotator backends (``oracle.kind``) behind one registry.

The package sits under the experiment: it imports the config, the data layer and the base modules,
never the experiment, the service or the commands. Importing it registers every backend.
"""

from osal_ray.annotation import files, label_studio, simulated  # noqa: F401  (each registers its backend)
from osal_ray.annotation.backends import ANNOTATORS, AnnotatorBackend, AnnotatorSetup, annotator_backend, oracle_kinds

__all__ = ["ANNOTATORS", "AnnotatorBackend", "AnnotatorSetup", "annotator_backend", "oracle_kinds"]
