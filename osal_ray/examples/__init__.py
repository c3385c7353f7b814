"""Example data for trying osal_ray on one's own kind of folder (``python -m osal_ray.examples.image_pool DIR``)."""
