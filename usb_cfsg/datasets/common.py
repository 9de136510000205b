"""Helpers shared by the dataset readers: locating a dataset, clear errors, checking images."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import DatasetError
from ..progress import progress
from .base import SourceData
from .images import load_rgb

logger = logging.getLogger(__name__)


def layout_error(name: str, missing: Path, layout: str, hint: str = "") -> DatasetError:
    """Build the error for a missing dataset file or folder.

    Args:
        name: Registry name of the dataset.
        missing: The file or folder that is missing.
        layout: A small tree showing the expected layout.
        hint: How to obtain the dataset (one or two sentences), appended to the message.

    Returns:
        The error, to be raised by the caller.
    """
    text = f"{name}: missing {Path(missing).absolute()}\nExpected layout:\n{layout.rstrip()}"
    if hint:
        text += "\n" + hint
    return DatasetError(text)


def resolve_root(
    name: str,
    root: Optional[str],
    markers: Sequence[str],
    subdirs: Sequence[str],
    layout: str,
    hint: str = "",
) -> Path:
    """Find the dataset folder: ``root`` itself or one of its standard sub-folders.

    A candidate is accepted when every marker (a path relative to it) exists. When none is,
    the error names the first missing marker of the most plausible candidate (the first one that
    exists as a folder and holds at least one marker, else the first existing one).

    Args:
        name: Registry name of the dataset, for messages.
        root: The folder the user gave (``data_dir``); ``None`` is an error.
        markers: Paths that must exist inside the dataset folder.
        subdirs: Standard names of the dataset folder inside ``root`` (e.g. ``CUB_200_2011``).
        layout: The expected layout, shown in errors.
        hint: How to obtain the dataset, shown in errors.

    Returns:
        The dataset folder.

    Raises:
        DatasetError: When no candidate holds every marker.
    """
    if root is None or str(root) == "":
        raise DatasetError(
            f"{name}: no data_dir given; set data_dir to the folder that contains the dataset.\n"
            f"Expected layout:\n{layout.rstrip()}" + (f"\n{hint}" if hint else "")
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise layout_error(name, base, layout, hint)
    candidates = [base] + [base / sub for sub in subdirs]
    for cand in candidates:
        if all((cand / m).exists() for m in markers):
            return cand
    existing = [c for c in candidates if c.is_dir()]
    plausible = [c for c in existing if any((c / m).exists() for m in markers)]
    best = (plausible or existing)[0]
    first_missing = next(m for m in markers if not (best / m).exists())
    raise layout_error(name, best / first_missing, layout, hint)


def read_text_lines(name: str, path: Path, layout: str) -> list[str]:
    """Read the non-empty, stripped lines of an annotation file.

    Raises:
        DatasetError: When the file is missing or not UTF-8 text.
    """
    if not path.is_file():
        raise layout_error(name, path, layout)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: {path} is not UTF-8 text ({exc}); is the file corrupt?") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_error(name: str, path: Path, line_no: int, line: str, expected: str) -> DatasetError:
    """The error for a malformed annotation line."""
    return DatasetError(f"{name}: {path} line {line_no}: cannot parse {line!r}; expected {expected}")


def load_mat(name: str, path: Path, layout: str) -> dict:
    """Load a MATLAB file with ``scipy.io.loadmat(squeeze_me=True)``.

    Raises:
        DatasetError: When the file is missing or not a readable .mat file.
    """
    if not path.is_file():
        raise layout_error(name, path, layout)
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, MatReadError...
        raise DatasetError(f"{name}: cannot read MATLAB file {path}: {exc}; is the file corrupt?") from None


def mat_field(name: str, mat: dict, key: str, path: Path) -> np.ndarray:
    """Return ``mat[key]`` as a 1-d array (a squeezed single element becomes length 1).

    Raises:
        DatasetError: When the key is absent.
    """
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{name}: {path} has no variable {key!r} (it has {keys}); is it the right file?")
    return np.atleast_1d(mat[key])


def apply_class_names(name: str, default: list[str], class_names: Optional[Sequence[str]]) -> list[str]:
    """Replace a dataset's class names with user-given display names.

    Args:
        name: Registry name of the dataset.
        default: The dataset's own names, in class order.
        class_names: The user's names (same order and length), or ``None``.

    Returns:
        The names to use.

    Raises:
        DatasetError: When the lengths differ.
    """
    if class_names is None:
        return list(default)
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise DatasetError(f"{name}: class_names must be a list of names, got {class_names!r}")
    if len(class_names) != len(default):
        raise DatasetError(
            f"{name}: class_names has {len(class_names)} names but the dataset has "
            f"{len(default)} classes; give one display name per class, in the dataset's class order"
        )
    return [str(c) for c in class_names]


def check_images(
    name: str,
    split: str,
    items: list[str],
    targets: list[int],
    skip_bad_images: bool,
) -> tuple[list[str], np.ndarray]:
    """Check that every listed image exists; optionally verify that it decodes.

    Without ``skip_bad_images`` a missing file is an error naming it (corrupt files are then found
    when loaded). With it, missing files are skipped and every remaining image is decoded once
    (under :func:`usb_cfsg.progress.progress`); missing and unreadable images are dropped and
    counted in a warning.

    Args:
        name: Registry name of the dataset.
        split: "train" or "test", for messages.
        items: Image paths.
        targets: Class index of each image.
        skip_bad_images: Skip bad images instead of failing.

    Returns:
        The kept paths and their targets (int64).

    Raises:
        DatasetError: When an image is missing and ``skip_bad_images`` is false.
    """
    missing = [i for i, p in enumerate(progress(items, f"{name}: checking {split} files")) if not os.path.isfile(p)]
    if missing and not skip_bad_images:
        shown = "\n  ".join(items[i] for i in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{name}: {len(missing)} {split} image(s) listed in the annotations do not exist:\n  "
            f"{shown}{more}\nRestore the files (re-extract the archive), or set skip_bad_images: true "
            "to skip them."
        )
    keep = np.ones(len(items), dtype=bool)
    keep[missing] = False
    unreadable = 0
    if skip_bad_images:
        for i in progress([i for i in range(len(items)) if keep[i]], f"{name}: verifying {split} images"):
            try:
                load_rgb(items[i])
            except DatasetError as exc:
                logger.warning("%s: skipping unreadable image: %s", name, exc)
                keep[i] = False
                unreadable += 1
        if missing or unreadable:
            logger.warning(
                "%s: skipped %d missing and %d unreadable %s image(s) of %d (skip_bad_images)",
                name,
                len(missing),
                unreadable,
                split,
                len(items),
            )
    kept_items = [p for p, k in zip(items, keep) if k]
    kept_targets = np.asarray(targets, dtype=np.int64)[keep]
    return kept_items, kept_targets


def locate(
    name: str,
    root: Optional[str],
    markers: Sequence[str],
    subdirs: Sequence[str],
    layout: str,
    hint: str,
    download: bool,
    fetch: Optional[Callable[[Path], None]],
) -> Path:
    """Resolve the dataset folder, downloading the dataset first when asked and absent.

    Args:
        name, root, markers, subdirs, layout, hint: As for :func:`resolve_root`.
        download: Whether to download when the dataset is not found.
        fetch: ``fetch(data_dir)`` downloads and unpacks the dataset under ``data_dir``; ``None``
            when the dataset cannot be downloaded (the error then says so).

    Returns:
        The dataset folder.

    Raises:
        DatasetError: When the dataset is absent and cannot be (or was not asked to be) downloaded.
    """
    try:
        return resolve_root(name, root, markers, subdirs, layout, hint)
    except DatasetError as exc:
        if not download or root is None or str(root) == "":
            raise
        if fetch is None:
            raise DatasetError(f"{exc}\n(download: true cannot help: {name} has no public download.)") from None
    fetch(Path(root).expanduser())
    return resolve_root(name, root, markers, subdirs, layout, hint)


def checked_source(
    name: str,
    base: Path,
    class_names: list[str],
    train: tuple[list[str], list[int]],
    test: tuple[list[str], list[int]],
    skip_bad_images: bool,
    prompt_templates: Sequence[str],
) -> SourceData:
    """The end every image-file reader shares: both splits' images checked (:func:`check_images`), the
    counts logged, the :class:`SourceData` built.

    Args:
        name: Registry name of the dataset.
        base: The dataset folder found (for the log line).
        class_names: The display names, in class order (after :func:`apply_class_names`).
        train: Image paths and class indices of the training split.
        test: The same for the test split.
        skip_bad_images: Skip missing and unreadable images instead of failing.
        prompt_templates: The dataset's prompt templates.

    Raises:
        DatasetError: When an image is missing and ``skip_bad_images`` is false.
    """
    train_items, train_targets = check_images(name, "train", *train, skip_bad_images)
    test_items, test_targets = check_images(name, "test", *test, skip_bad_images)
    logger.info(
        "%s: %d classes, %d train / %d test images from %s",
        name,
        len(class_names),
        len(train_items),
        len(test_items),
        base,
    )
    return SourceData(
        name=name,
        class_names=list(class_names),
        train_items=train_items,
        train_targets=train_targets,
        test_items=test_items,
        test_targets=test_targets,
        prompt_templates=tuple(prompt_templates),
    )
