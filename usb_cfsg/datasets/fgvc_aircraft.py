"""FGVC-Aircraft 2013b at the variant level: 100 aircraft variants, 6,667 trainval / 3,333 test."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import DatasetError, did_you_mean
from .base import SourceData, register_dataset
from .common import apply_class_names, checked_source, locate, parse_error, read_text_lines
from .download import Remote, fetch_all

NAME = "fgvc_aircraft"
FOLDER = "fgvc-aircraft-2013b"
PAGE = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"
# The publisher gives no checksum for the archive.
REMOTE = Remote(url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz")
LAYOUT = """\
<data_dir>/fgvc-aircraft-2013b/data/   (data_dir may also point at fgvc-aircraft-2013b/ or data/)
|-- variants.txt                        one variant per line; this order is the class order
|-- images_variant_trainval.txt         <image_id> <variant>
|-- images_variant_test.txt             <image_id> <variant>
`-- images/<image_id>.jpg ...
"""
HINT = (
    f"Get fgvc-aircraft-2013b.tar.gz from {PAGE} ({REMOTE.url}) and unpack it in data_dir "
    "(tar xzf fgvc-aircraft-2013b.tar.gz -C <data_dir>), or set download: true."
)
MARKERS = ("variants.txt", "images_variant_trainval.txt", "images_variant_test.txt", "images")
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of aircraft.",
    "a photo of the {}, a type of aircraft.",
    "a photo of a {}, an airplane.",
)


def _read_list(path: Path, index: dict[str, int], image_dir: Path) -> tuple[list[str], list[int]]:
    """Parse ``<image_id> <variant>`` lines."""
    items: list[str] = []
    targets: list[int] = []
    for no, line in enumerate(read_text_lines(NAME, path, LAYOUT), start=1):
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise parse_error(NAME, path, no, line, "'<image_id> <variant name>'")
        image_id, variant = parts[0], parts[1].strip()
        if variant not in index:
            raise DatasetError(
                f"{NAME}: {path} line {no}: variant {variant!r} is not in variants.txt{did_you_mean(variant, index)}"
            )
        items.append(str(image_dir / f"{image_id}.jpg"))
        targets.append(index[variant])
    return items, targets


def _fetch(data_dir: Path) -> None:
    manual = (
        f"Download fgvc-aircraft-2013b.tar.gz by hand from {PAGE} and unpack it so that "
        f"{data_dir / FOLDER / 'data' / 'variants.txt'} exists:\n{LAYOUT}"
    )
    fetch_all(NAME, [REMOTE], data_dir, manual)


@register_dataset(NAME)
def read_fgvc_aircraft(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read FGVC-Aircraft (variant level; train = the published ``trainval`` split).

    Args:
        root: ``fgvc-aircraft-2013b/data/``, ``fgvc-aircraft-2013b/`` or the folder containing it.
        download: Download the archive from the publisher when the dataset is absent (the
            publisher gives no checksum).
        skip_bad_images: Skip missing and unreadable images (logged with a count) instead of failing.
        class_names: Display names replacing the 100 variant names (same order).

    Returns:
        The dataset, classes in ``variants.txt`` order, images in list-file order.

    Raises:
        DatasetError: On a missing or malformed file, a missing image, or a failed download.
    """
    base = locate(NAME, root, MARKERS, ("data", f"{FOLDER}/data"), LAYOUT, HINT, download, _fetch)
    names = read_text_lines(NAME, base / "variants.txt", LAYOUT)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{NAME}: {base / 'variants.txt'} lists {dup} more than once")
    index = {n: i for i, n in enumerate(names)}
    train = _read_list(base / "images_variant_trainval.txt", index, base / "images")
    test = _read_list(base / "images_variant_test.txt", index, base / "images")
    return checked_source(
        NAME, base, apply_class_names(NAME, names, class_names), train, test, skip_bad_images, PROMPT_TEMPLATES
    )
