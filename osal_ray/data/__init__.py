"""Datasets, open-set splits and the Parquet pool that Ray Data reads."""

from osal_ray.data.datasets import DATASETS, ImageSplit, SourceDataset, load_dataset, register_dataset
from osal_ray.data.image_pool import ImagePoolSource, materialize_image_pool
from osal_ray.data.pool import PoolManifest, materialize_pool, read_manifest
from osal_ray.data.splits import OpenSetSplit, build_split, resolve_known_classes

__all__ = [
    "DATASETS",
    "ImagePoolSource",
    "ImageSplit",
    "OpenSetSplit",
    "PoolManifest",
    "SourceDataset",
    "build_split",
    "load_dataset",
    "materialize_image_pool",
    "materialize_pool",
    "read_manifest",
    "register_dataset",
    "resolve_known_classes",
]
