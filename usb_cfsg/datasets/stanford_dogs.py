"""Stanford Dogs: 120 dog breeds (ImageNet synsets), 12,000 train / 8,580 test images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .common import apply_class_names, checked_source, layout_error, load_mat, locate, mat_field
from .download import Remote, fetch_all

NAME = "stanford_dogs"
FOLDER = "stanford_dogs"
PAGE = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
# The publisher gives no checksums.
REMOTES = (Remote(url=PAGE + "images.tar"), Remote(url=PAGE + "lists.tar"))
LAYOUT = """\
<data_dir>/stanford_dogs/          (or data_dir itself)
|-- Images/n02085620-Chihuahua/n02085620_10074.jpg ...
|-- lists/train_list.mat            file_list: n02085620-Chihuahua/<file>.jpg, labels: 1-based
`-- lists/test_list.mat             (the .mat files may also sit next to Images/, as lists.tar unpacks them)
"""
HINT = f"Get images.tar and lists.tar from {PAGE} and unpack both in <data_dir>/stanford_dogs/, or set download: true."
MARKERS = ("Images",)
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of dog.",
    "a photo of the {}, a dog breed.",
    "a photo of my {}, a type of dog.",
)


def breed_name(folder: str) -> str:
    """Turn ``n02085620-Chihuahua`` into ``Chihuahua`` (underscores become spaces)."""
    breed = folder.split("-", 1)[1] if "-" in folder else folder
    return breed.replace("_", " ").strip()


def _list_file(base: Path, stem: str) -> Path:
    for cand in (base / "lists" / f"{stem}.mat", base / f"{stem}.mat"):
        if cand.is_file():
            return cand
    raise layout_error(NAME, base / "lists" / f"{stem}.mat", LAYOUT, HINT)


def _read_list(path: Path) -> tuple[list[str], list[int]]:
    """Relative paths and 1-based labels of a ``*_list.mat`` file."""
    mat = load_mat(NAME, path, LAYOUT)
    files = [str(np.asarray(f).reshape(-1)[0]) for f in mat_field(NAME, mat, "file_list", path)]
    labels = mat_field(NAME, mat, "labels", path).astype(np.int64).tolist()
    if len(files) != len(labels):
        raise DatasetError(f"{NAME}: {path}: {len(files)} files but {len(labels)} labels")
    return files, labels


def _fetch(data_dir: Path) -> None:
    dest = data_dir / FOLDER
    manual = f"Download images.tar and lists.tar by hand from {PAGE} and unpack both in {dest}:\n{LAYOUT}"
    fetch_all(NAME, REMOTES, dest, manual)


@register_dataset(NAME)
def read_stanford_dogs(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read Stanford Dogs with the published train/test lists.

    Args:
        root: The folder holding ``Images/`` or the one containing ``stanford_dogs/``.
        download: Download ``images.tar`` and ``lists.tar`` from the publisher when absent.
        skip_bad_images: Skip missing and unreadable images (logged with a count) instead of failing.
        class_names: Display names replacing the breed names (same order).

    Returns:
        The dataset; class ``i`` is label ``i + 1`` of the lists (synset order); images in list order.

    Raises:
        DatasetError: On a missing or malformed file, a missing image, or a failed download.
    """
    base = locate(NAME, root, MARKERS, (FOLDER,), LAYOUT, HINT, download, _fetch)
    lists = {split: _read_list(_list_file(base, f"{split}_list")) for split in ("train", "test")}
    folder_of: dict[int, str] = {}
    for split, (files, labels) in lists.items():
        for rel, label in zip(files, labels):
            folder = rel.replace("\\", "/").split("/", 1)[0]
            if folder_of.setdefault(label, folder) != folder:
                raise DatasetError(
                    f"{NAME}: {split}_list.mat: label {label} is used for both {folder_of[label]!r} and {folder!r}"
                )
    num_classes = max(folder_of) if folder_of else 0
    absent = [i for i in range(1, num_classes + 1) if i not in folder_of]
    if not folder_of or min(folder_of) < 1 or absent:
        raise DatasetError(f"{NAME}: labels in the lists must cover 1..{num_classes} (absent: {absent[:10]})")
    names = [breed_name(folder_of[i]) for i in range(1, num_classes + 1)]
    parts = {
        part: ([str(base / "Images" / rel) for rel in files], [lab - 1 for lab in labels])
        for part, (files, labels) in lists.items()
    }
    return checked_source(
        NAME,
        base,
        apply_class_names(NAME, names, class_names),
        parts["train"],
        parts["test"],
        skip_bad_images,
        PROMPT_TEMPLATES,
    )
