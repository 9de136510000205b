"""Fashion-MNIST (10 clothing classes, 60,000 train / 10,000 test, 28x28 grayscale), in memory.

The only real image data available offline on our machines (Debian's ``dataset-fashion-mnist``
package), so it serves as the small real-data dataset for smoke runs and tests, and as the
pretraining data of the demo CLIP (:mod:`usb_cfsg_tools.demo_clip`). A run on the demo CLIP names its
card (``pretrain_pool: <dir>/card.json``); the open-set split then sees only the training images
outside the card's pool (:func:`usb_cfsg.datasets.pretrain_pool.without_pretrain_pool`), so no pretraining image
is ever a labeled or unlabeled image.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .common import apply_class_names
from .download import Remote, fetch_all

logger = logging.getLogger(__name__)

NAME = "fmnist_openset"
#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SUBDIRS = ("fashion-mnist", "FashionMNIST/raw")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
REMOTES = (
    Remote(url=MIRROR + "train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d", extract=False),
    Remote(url=MIRROR + "train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe", extract=False),
    Remote(url=MIRROR + "t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79", extract=False),
    Remote(url=MIRROR + "t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310", extract=False),
)
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of clothing.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
)
LAYOUT = f"""\
<data_dir>/   (or <data_dir>/fashion-mnist/; with no files there: {DEBIAN_DIR})
|-- train-images-idx3-ubyte[.gz]
|-- train-labels-idx1-ubyte[.gz]
|-- t10k-images-idx3-ubyte[.gz]
`-- t10k-labels-idx1-ubyte[.gz]
"""


def _find(folder: Path, stem: str) -> Optional[Path]:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _complete(folder: Path) -> bool:
    return all(_find(folder, stem) is not None for stem in FILES.values())


def _candidates(root: Optional[str]) -> list[Path]:
    """Folders to look in, in order: root, its standard sub-folders, then Debian's folder."""
    found: list[Path] = []
    if root is not None and str(root) != "":
        base = Path(root).expanduser()
        found += [base] + [base / sub for sub in SUBDIRS]
    found.append(Path(DEBIAN_DIR))
    return found


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) holding unsigned bytes.

    Args:
        path: The file.
        expected_ndim: 1 for labels, 3 for images.

    Returns:
        The uint8 array.

    Raises:
        DatasetError: When the file is unreadable or not a uint8 IDX file of that rank.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{NAME}: cannot read {path}: {exc}; is the file corrupt?") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_ndim:
        raise DatasetError(f"{NAME}: {path} is not an IDX file of unsigned bytes with {expected_ndim} dimension(s)")
    header = 4 + 4 * expected_ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetError(
            f"{NAME}: {path} is truncated or padded: header says shape {shape}, file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@register_dataset(NAME)
def read_fmnist(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read Fashion-MNIST from IDX files (plain or ``.gz``).

    Looks in ``root``, ``root/fashion-mnist/``, ``root/FashionMNIST/raw/`` (torchvision's layout),
    then Debian's ``/usr/share/datasets/fashion-mnist``; the first folder holding all four files
    wins. ``root=None`` goes straight to the Debian folder.

    Args:
        root: A folder with the four IDX files, or ``None``.
        download: When no folder has the files, download them (MD5-checked) into
            ``root/fashion-mnist/``.
        skip_bad_images: Ignored (images are in memory).
        class_names: Display names replacing the 10 class names.

    Returns:
        The dataset; items are 28x28 uint8 arrays (train items one (60000, 28, 28) array).

    Raises:
        DatasetError: When no folder has the files (the message names the Debian package).
    """
    del skip_bad_images  # nothing to verify for in-memory arrays
    folder = next((c for c in _candidates(root) if _complete(c)), None)
    if folder is None and download and root is not None and str(root) != "":
        dest = Path(root).expanduser() / SUBDIRS[0]
        fetch_all(
            NAME,
            REMOTES,
            dest,
            f"Install Debian's copy instead (apt-get install dataset-fashion-mnist), "
            f"or download the four .gz files by hand from {MIRROR} into {dest}.",
        )
        folder = dest if _complete(dest) else None
    if folder is None:
        looked = ", ".join(str(c) for c in _candidates(root))
        raise DatasetError(
            f"{NAME}: Fashion-MNIST files not found (looked in {looked}).\n"
            f"Install them with `apt-get install dataset-fashion-mnist` (files go to {DEBIAN_DIR}), "
            f"or put these files in data_dir (or set download: true):\n{LAYOUT}"
        )
    found = {key: _find(folder, stem) for key, stem in FILES.items()}
    arrays = {
        key: read_idx(path, 3 if key.endswith("images") else 1) for key, path in found.items() if path is not None
    }  # all present: the folder was checked complete above
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetError(f"{NAME}: {folder}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise DatasetError(f"{NAME}: {folder}: {split} labels must lie in 0..{len(CLASS_NAMES) - 1}")
    logger.info(
        "%s: %d train / %d test images from %s", NAME, len(arrays["train_images"]), len(arrays["test_images"]), folder
    )
    return SourceData(
        name=NAME,
        class_names=apply_class_names(NAME, CLASS_NAMES, class_names),
        train_items=arrays["train_images"],
        train_targets=arrays["train_labels"].astype(np.int64),
        test_items=arrays["test_images"],
        test_targets=arrays["test_labels"].astype(np.int64),
        prompt_templates=PROMPT_TEMPLATES,
    )
