"""Any dataset laid out as ``root/train/<class>/*`` and ``root/test/<class>/*``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from ..errors import DatasetError, did_you_mean
from .base import SourceData, register_dataset
from .common import checked_source, locate

logger = logging.getLogger(__name__)

NAME = "image_folder"
SPLITS = ("train", "test")
LAYOUT = """\
<data_dir>/
|-- train/<class name>/<image>.jpg ...   any image format PIL reads (jpg, png, webp, bmp, tif, ...)
`-- test/<class name>/<image>.jpg ...    the same class folder names
"""
PROMPT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.")


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) that PIL can open."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path, extensions: frozenset[str]) -> tuple[list[str], int]:
    """Image files under ``folder`` (recursively, sorted by path) and the number of other files."""
    images: list[str] = []
    others = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in extensions:
            images.append(str(path))
        else:
            others += 1
    return images, others


def _choose_classes(base: Path, found: list[str], class_names: Optional[Sequence[str]]) -> list[str]:
    """The class folders to use, in label order."""
    if class_names is None:
        return found
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise DatasetError(f"{NAME}: class_names must be a list of folder names, got {class_names!r}")
    chosen = [str(c) for c in class_names]
    if len(set(chosen)) != len(chosen):
        dup = sorted({c for c in chosen if chosen.count(c) > 1})
        raise DatasetError(f"{NAME}: class_names lists {dup} more than once")
    for cname in chosen:
        if cname not in found:
            raise DatasetError(
                f"{NAME}: class {cname!r} of class_names has no folder in {base / 'train'} or "
                f"{base / 'test'}{did_you_mean(cname, found)} Folders found: {', '.join(found)}"
            )
    ignored = [f for f in found if f not in chosen]
    if ignored:
        logger.warning("%s: ignoring %d class folder(s) not in class_names: %s", NAME, len(ignored), ", ".join(ignored))
    return chosen


@register_dataset(NAME)
def read_image_folder(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read a folder of class sub-folders for each of train and test.

    Args:
        root: The folder holding ``train/`` and ``test/``.
        download: Ignored (a user's folder cannot be downloaded; a warning is logged).
        skip_bad_images: Decode every image once and drop unreadable ones (logged with a count).
        class_names: Folder names to use, in label order; folders not listed are ignored (with a
            warning). ``None``: every folder found in train or test, sorted by name.

    Returns:
        The dataset; within each split images are sorted by class, then path.

    Raises:
        DatasetError: When ``train/`` or ``test/`` is missing, a class of ``class_names`` has no
            folder, or no image is found.
    """
    if download:
        logger.warning("%s: download: true has no effect for a local image folder", NAME)
    base = locate(NAME, root, SPLITS, (), LAYOUT, "", False, None)
    per_split = {split: _class_folders(base / split) for split in SPLITS}
    found = sorted(set(per_split["train"]) | set(per_split["test"]))
    if not found:
        raise DatasetError(
            f"{NAME}: no class folders in {base / 'train'} or {base / 'test'}\nExpected layout:\n{LAYOUT}"
        )
    classes = _choose_classes(base, found, class_names)
    extensions = image_extensions()
    data: dict[str, tuple[list[str], list[int]]] = {}
    for split in SPLITS:
        items: list[str] = []
        targets: list[int] = []
        skipped = 0
        for label, cname in enumerate(classes):
            folder = base / split / cname
            if not folder.is_dir():
                logger.warning("%s: class %r has no %s folder (%s)", NAME, cname, split, folder)
                continue
            images, others = _images_in(folder, extensions)
            skipped += others
            if not images:
                logger.warning("%s: class %r has no %s images in %s", NAME, cname, split, folder)
            items.extend(images)
            targets.extend([label] * len(images))
        if skipped:
            logger.warning("%s: ignored %d %s file(s) whose extension is not an image format", NAME, skipped, split)
        if not items:
            raise DatasetError(f"{NAME}: no images found under {base / split}\nExpected layout:\n{LAYOUT}")
        data[split] = items, targets
    return checked_source(
        NAME,
        base,
        [c.replace("_", " ") for c in classes],
        data["train"],
        data["test"],
        skip_bad_images,
        PROMPT_TEMPLATES,
    )
