"""Stanford Cars: 196 car models (make, model, year), 8,144 train / 8,041 test images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .common import apply_class_names, checked_source, layout_error, load_mat, locate, mat_field

NAME = "stanford_cars"
FOLDER = "stanford_cars"
PAGE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
LAYOUT = """\
<data_dir>/                          (the devkit layout; torchvision's is the same inside <data_dir>/stanford_cars/)
|-- devkit/cars_meta.mat              class_names: 1x196 cell of strings
|-- devkit/cars_train_annos.mat       annotations: struct bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname
|-- cars_test_annos_withlabels.mat    same struct for the test images (also accepted in devkit/)
|-- cars_train/00001.jpg ...
`-- cars_test/00001.jpg ...
"""
HINT = (
    f"The publisher's page ({PAGE}) no longer serves the files; get car_devkit.tgz, cars_train.tgz, "
    "cars_test.tgz and cars_test_annos_withlabels.mat from a mirror (e.g. the Kaggle or Hugging Face "
    "copies of 'Stanford Cars') and unpack them into data_dir as shown."
)
MARKERS = ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train", "cars_test")
TEST_ANNOS = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of car.",
    "a photo of the {}.",
    "a photo of my {}.",
    "a photo of a {}, a car model.",
)


def _image_folder(base: Path, split: str) -> Path:
    """``cars_<split>/``, or ``cars_<split>/cars_<split>/`` as some mirrors nest it."""
    folder = base / f"cars_{split}"
    nested = folder / f"cars_{split}"
    return nested if nested.is_dir() else folder


def _read_annotations(path: Path, image_dir: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """Read an ``annotations`` struct array into image paths and 0-based class indices."""
    annos = mat_field(NAME, load_mat(NAME, path, LAYOUT), "annotations", path)
    fields = annos.dtype.names or ()
    for needed in ("fname", "class"):
        if needed not in fields:
            extra = (
                " (this looks like cars_test_annos.mat without labels: use cars_test_annos_withlabels.mat)"
                if needed == "class"
                else ""
            )
            raise DatasetError(f"{NAME}: {path}: the annotations struct has no field {needed!r}{extra}")
    items: list[str] = []
    targets: list[int] = []
    for record in annos:
        label = int(np.asarray(record["class"]).reshape(-1)[0])
        fname = str(np.asarray(record["fname"]).reshape(-1)[0])
        if not 1 <= label <= num_classes:
            raise DatasetError(f"{NAME}: {path}: image {fname} has class {label}, expected 1..{num_classes}")
        items.append(str(image_dir / fname))
        targets.append(label - 1)
    return items, targets


@register_dataset(NAME)
def read_stanford_cars(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read Stanford Cars in the devkit layout or torchvision's ``stanford_cars/`` layout.

    Args:
        root: The dataset folder (holding ``devkit/``) or the folder containing ``stanford_cars/``.
        download: Not possible (the publisher's URLs are gone); an absent dataset is an error
            saying where to get it.
        skip_bad_images: Skip missing and unreadable images (logged with a count) instead of failing.
        class_names: Display names replacing the 196 model names (same order).

    Returns:
        The dataset, images in annotation-file order.

    Raises:
        DatasetError: On a missing or malformed file, a missing image, or ``download`` with no data.
    """
    base = locate(NAME, root, MARKERS, (FOLDER,), LAYOUT, HINT, download, None)
    meta_path = base / "devkit" / "cars_meta.mat"
    names = [str(n).strip() for n in mat_field(NAME, load_mat(NAME, meta_path, LAYOUT), "class_names", meta_path)]
    test_annos = next((base / t for t in TEST_ANNOS if (base / t).is_file()), None)
    if test_annos is None:
        raise layout_error(NAME, base / TEST_ANNOS[0], LAYOUT, HINT)
    train = _read_annotations(base / "devkit" / "cars_train_annos.mat", _image_folder(base, "train"), len(names))
    test = _read_annotations(test_annos, _image_folder(base, "test"), len(names))
    return checked_source(
        NAME, base, apply_class_names(NAME, names, class_names), train, test, skip_bad_images, PROMPT_TEMPLATES
    )
