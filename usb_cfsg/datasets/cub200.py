"""CUB-200-2011 (Caltech-UCSD Birds): 200 bird species, 5,994 train / 5,794 test images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .common import apply_class_names, checked_source, layout_error, locate, parse_error, read_text_lines
from .download import Remote, fetch_all

NAME = "cub200"
FOLDER = "CUB_200_2011"
PAGE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
REMOTE = Remote(
    url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    md5="97eceeb196236b17998738112f37df78",
)
LAYOUT = """\
<data_dir>/CUB_200_2011/           (or data_dir pointing at CUB_200_2011/ itself)
|-- classes.txt                     <class_id> 001.Black_footed_Albatross
|-- images.txt                      <image_id> 001.Black_footed_Albatross/<file>.jpg
|-- image_class_labels.txt          <image_id> <class_id>
|-- train_test_split.txt            <image_id> <1=train | 0=test>
`-- images/001.Black_footed_Albatross/<file>.jpg ...
"""
HINT = (
    f"Get CUB_200_2011.tgz from {PAGE} ({REMOTE.url}) and unpack it in data_dir "
    "(tar xzf CUB_200_2011.tgz -C <data_dir>), or set download: true."
)
MARKERS = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of bird.",
    "a close-up photo of a {}, a type of bird.",
    "a photo of the {}, a species of bird.",
    "a bird photo of a {}.",
)

_PREFIX = re.compile(r"^\d+\.")


def pretty_class_name(folder: str) -> str:
    """Turn ``001.Black_footed_Albatross`` into ``Black footed Albatross``."""
    return _PREFIX.sub("", folder).replace("_", " ").strip()


def _id_table(path: Path, layout: str, expected: str) -> dict[int, str]:
    """Parse ``<int id> <rest>`` lines into a dict, rejecting malformed lines and duplicate ids."""
    table: dict[int, str] = {}
    for no, line in enumerate(read_text_lines(NAME, path, layout), start=1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise parse_error(NAME, path, no, line, expected)
        key = int(parts[0])
        if key in table:
            raise DatasetError(f"{NAME}: {path} line {no}: id {key} appears twice")
        table[key] = parts[1].strip()
    return table


def _fetch(data_dir: Path) -> None:
    manual = f"Download it by hand from {PAGE} and unpack it so that {data_dir / FOLDER}/images.txt exists:\n{LAYOUT}"
    fetch_all(NAME, [REMOTE], data_dir, manual)


@register_dataset(NAME)
def read_cub200(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read CUB-200-2011 as published.

    Args:
        root: ``CUB_200_2011/`` or the folder that contains it.
        download: Download the archive from CaltechDATA (MD5-checked) when the dataset is absent.
        skip_bad_images: Skip missing and unreadable images (logged with a count) instead of failing.
        class_names: Display names replacing the 200 species names (same order).

    Returns:
        The dataset, images in ``images.txt`` order, classes in ``classes.txt`` id order.

    Raises:
        DatasetError: On a missing or malformed file, a missing image, or a failed download.
    """
    base = locate(NAME, root, MARKERS, (FOLDER,), LAYOUT, HINT, download, _fetch)
    classes = _id_table(base / "classes.txt", LAYOUT, "'<class_id> <class folder name>'")
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DatasetError(f"{NAME}: class ids in {base / 'classes.txt'} must be 1..{len(classes)} without gaps")
    names = [pretty_class_name(classes[i]) for i in range(1, len(classes) + 1)]

    images = _id_table(base / "images.txt", LAYOUT, "'<image_id> <relative path>'")
    labels = _id_table(base / "image_class_labels.txt", LAYOUT, "'<image_id> <class_id>'")
    is_train = _id_table(base / "train_test_split.txt", LAYOUT, "'<image_id> <0|1>'")

    split_items: dict[str, list[str]] = {"train": [], "test": []}
    split_targets: dict[str, list[int]] = {"train": [], "test": []}
    for image_id, rel in images.items():
        for table, fname in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DatasetError(f"{NAME}: image id {image_id} ({rel}) of images.txt is missing from {base / fname}")
        label = labels[image_id]
        if not label.isdigit() or not 1 <= int(label) <= len(names):
            raise DatasetError(
                f"{NAME}: {base / 'image_class_labels.txt'}: image id {image_id} has class {label!r}, "
                f"expected 1..{len(names)}"
            )
        flag = is_train[image_id]
        if flag not in ("0", "1"):
            raise DatasetError(
                f"{NAME}: {base / 'train_test_split.txt'}: image id {image_id} has {flag!r}, expected 0 or 1"
            )
        split = "train" if flag == "1" else "test"
        split_items[split].append(str(base / "images" / rel))
        split_targets[split].append(int(label) - 1)
    if not split_items["train"]:
        raise layout_error(NAME, base / "train_test_split.txt", LAYOUT, "(no image is marked 1 = train)")

    return checked_source(
        NAME,
        base,
        apply_class_names(NAME, names, class_names),
        (split_items["train"], split_targets["train"]),
        (split_items["test"], split_targets["test"]),
        skip_bad_images,
        PROMPT_TEMPLATES,
    )
