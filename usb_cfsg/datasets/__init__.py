"""Datasets for open-set semi-supervised learning: readers, the open-set split, USB glue.

Importing this package registers every reader in :data:`DATASETS`; it does not import semilearn
(the torch dataset module does, when :func:`build_openset_datasets` first runs).
"""

from __future__ import annotations

from . import (  # noqa: F401
    cub200,
    fgvc_aircraft,
    flowers102,
    fmnist,
    fmnist_badged,
    fmnist_cluttered,
    image_folder,
    stanford_cars,
    stanford_dogs,
)
from .base import DATASETS, SourceData, read_source, register_dataset
from .build import OpenSetInfo, build_openset_datasets
from .images import load_rgb
from .split import OpenSetSplit, make_openset_split
from .transforms import build_transforms

__all__ = [
    "DATASETS",
    "OpenSetInfo",
    "OpenSetSplit",
    "SourceData",
    "build_openset_datasets",
    "build_transforms",
    "load_rgb",
    "make_openset_split",
    "read_source",
    "register_dataset",
]
