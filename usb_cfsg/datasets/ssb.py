"""The Semantic Shift Benchmark (SSB) class splits of CUB-200-2011, FGVC-Aircraft and Stanford Cars.

Vaze, Han, Vedaldi and Zisserman, "Open-Set Recognition: a Good Closed-Set Classifier is All You
Need?" (ICLR 2022) fix, for each of these datasets, the known (seen) classes and group the unknown
classes by their semantic distance to the known ones into Easy, Medium and Hard. The lists ship in
``ssb_splits.json`` next to this module, unchanged from the benchmark's published split files; the
file's ``source`` entry says exactly where from (repository, commit, files) and its
``index_convention`` entry how the benchmark numbers the classes.

Index convention, and how it maps onto our readers' class order (tested on replicas with every
class, ``tests/datasets/test_split.py``):

* ``cub200``: SSB index = class id in ``image_class_labels.txt`` minus 1 = position in
  ``classes.txt``; our reader's class order is the ``classes.txt`` id order, so SSB index =
  our class index.
* ``stanford_cars``: SSB index = class id of the devkit annotations minus 1 = position in
  ``cars_meta.mat``; our reader uses the same order, so SSB index = our class index.
* ``fgvc_aircraft``: SSB index = position of the variant name in the sorted unique variant names of
  ``images_variant_trainval.txt`` (``numpy.unique``); our reader's class order is ``variants.txt``.
  The mapping therefore goes through the names: SSB index ``i`` is the class whose (original)
  variant name is the ``i``-th of the sorted unique names of the training images.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

from ..errors import DatasetError

#: The benchmark's lists and their provenance, shipped as package data.
SSB_FILE = Path(__file__).with_name("ssb_splits.json")
#: Datasets with an SSB split -> (classes in the dataset, known classes = required num_classes).
SSB_DATASETS: Dict[str, tuple] = {"cub200": (200, 100), "fgvc_aircraft": (100, 50), "stanford_cars": (196, 98)}
#: Difficulty groups of the unknown classes, easiest first.
DIFFICULTIES = ("Easy", "Medium", "Hard")


@dataclass(frozen=True)
class SSBClasses:
    """One dataset's SSB split in our reader's class indices.

    Attributes:
        dataset: Registry name.
        seen_classes: Reader class indices of the known classes, in the benchmark's order.
        difficulty: Reader class index of every unknown class -> "Easy" / "Medium" / "Hard".
        source: Provenance of the lists (from ``ssb_splits.json``).
    """

    dataset: str
    seen_classes: List[int]
    difficulty: Dict[int, str]
    source: str


@functools.lru_cache(maxsize=1)
def load_ssb_file() -> Dict[str, Any]:
    """The parsed ``ssb_splits.json`` (cached)."""
    with open(SSB_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def ssb_index_to_class(
    dataset: str, class_names: Sequence[str], train_targets: Union[Sequence[int], np.ndarray]
) -> List[int]:
    """``order[i]`` = our reader's class index of SSB class index ``i``.

    Args:
        dataset: ``cub200``, ``fgvc_aircraft`` or ``stanford_cars``.
        class_names: The reader's **original** class names (before any ``class_names`` override),
            in the reader's class order.
        train_targets: Reader class index of every training image (FGVC-Aircraft's SSB numbering
            runs over the variants of ``images_variant_trainval.txt``, our training split).

    Raises:
        DatasetError: A dataset without an SSB split, or a class count that is not the benchmark's.
    """
    if dataset not in SSB_DATASETS:
        raise DatasetError(
            f"class_split: ssb exists for {sorted(SSB_DATASETS)} only, not {dataset!r}; use "
            f"class_split: first or random, or list seen_classes"
        )
    total, _ = SSB_DATASETS[dataset]
    if len(class_names) != total:
        raise DatasetError(
            f"class_split: ssb: {dataset} has {len(class_names)} classes here, but the Semantic Shift "
            f"Benchmark split is defined on all {total}; use the complete dataset"
        )
    if dataset != "fgvc_aircraft":
        return list(range(total))
    present = sorted({int(t) for t in np.asarray(train_targets, dtype=np.int64).tolist()})
    if len(present) != total:
        raise DatasetError(
            f"class_split: ssb: the fgvc_aircraft training images cover {len(present)} of {total} "
            f"variants; the benchmark numbers the variants of images_variant_trainval.txt, all {total}"
        )
    by_name = sorted(present, key=lambda c: str(class_names[c]))  # numpy.unique order of the variant names
    return by_name


def ssb_classes(
    dataset: str, num_seen: int, class_names: Sequence[str], train_targets: Union[Sequence[int], np.ndarray]
) -> SSBClasses:
    """The SSB known classes and unknown-class difficulties of ``dataset`` in reader indices.

    Args:
        dataset: Registry name.
        num_seen: The configured ``num_classes`` (K); must be the benchmark's number of known classes.
        class_names: The reader's original class names, in its class order.
        train_targets: Reader class index of every training image.

    Raises:
        DatasetError: No SSB split for the dataset, the wrong ``num_classes``, or an incomplete dataset.
    """
    if dataset not in SSB_DATASETS:
        raise DatasetError(
            f"class_split: ssb exists for {sorted(SSB_DATASETS)} only, not {dataset!r}; use "
            f"class_split: first or random, or list seen_classes"
        )
    _, known = SSB_DATASETS[dataset]
    if int(num_seen) != known:
        raise DatasetError(
            f"class_split: ssb on {dataset} fixes {known} known classes, but num_classes = {num_seen}; "
            f"set num_classes: {known} (and num_labels a multiple of {known})"
        )
    order = ssb_index_to_class(dataset, class_names, train_targets)
    data = load_ssb_file()
    entry = data["datasets"][dataset]
    seen = [order[int(i)] for i in entry["known_classes"]]
    difficulty: Dict[int, str] = {}
    for group, indices in entry["unknown_classes"].items():
        for i in indices:
            difficulty[order[int(i)]] = str(group)
    unknown = set(range(len(order))) - set(seen)
    if len(seen) != known or set(difficulty) != unknown:
        raise DatasetError(
            f"{SSB_FILE}: the {dataset} lists do not partition its {len(order)} classes; the file is "
            f"damaged (reinstall usb_cfsg)"
        )
    return SSBClasses(dataset=dataset, seen_classes=seen, difficulty=difficulty, source=str(data["source"]))


def difficulty_of_images(test_targets: Union[Sequence[int], np.ndarray], difficulty: Mapping[int, str]) -> List[str]:
    """Per test image: its class's difficulty group, ``""`` for a seen-class image."""
    return [difficulty.get(int(t), "") for t in np.asarray(test_targets, dtype=np.int64).tolist()]


__all__ = [
    "DIFFICULTIES",
    "SSBClasses",
    "SSB_DATASETS",
    "SSB_FILE",
    "load_ssb_file",
    "ssb_classes",
    "ssb_index_to_class",
    "difficulty_of_images",
]
