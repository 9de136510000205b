"""Oxford 102 Flowers: 102 flower species, 2,040 train+val / 6,149 test images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .common import apply_class_names, checked_source, load_mat, locate, mat_field
from .download import Remote, fetch_all

NAME = "flowers102"
FOLDER = "flowers-102"
PAGE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
REMOTES = (
    Remote(url=PAGE + "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa"),
    Remote(url=PAGE + "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d", extract=False),
    Remote(url=PAGE + "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c", extract=False),
)
LAYOUT = """\
<data_dir>/flowers-102/     (or data_dir itself, or <data_dir>/flowers102/)
|-- imagelabels.mat          labels: class 1..102 of every image
|-- setid.mat                trnid, valid, tstid: 1-based image numbers of each split
`-- jpg/image_00001.jpg ...
"""
HINT = (
    f"Get 102flowers.tgz, imagelabels.mat and setid.mat from {PAGE} into <data_dir>/flowers-102/ "
    "and unpack 102flowers.tgz there (it holds jpg/), or set download: true."
)
MARKERS = ("imagelabels.mat", "setid.mat", "jpg")
PROMPT_TEMPLATES = (
    "a photo of a {}, a type of flower.",
    "a close-up photo of a {}, a type of flower.",
    "a photo of the {} flower.",
)

#: The publisher ships no names; this is the list in common use (label 1 first), except that
#: class 60 is "pink-yellow dahlia" where that list has a stray "?".
FLOWER_NAMES = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
]


def _fetch(data_dir: Path) -> None:
    dest = data_dir / FOLDER
    manual = f"Download the files by hand from {PAGE} into {dest} and unpack 102flowers.tgz there:\n{LAYOUT}"
    fetch_all(NAME, REMOTES, dest, manual)


def _split(set_ids: dict, key: str, path: Path, labels: np.ndarray, image_dir: Path) -> tuple[list[str], list[int]]:
    """Image paths and 0-based labels of the 1-based image numbers in ``set_ids[key]``."""
    items: list[str] = []
    targets: list[int] = []
    for number in mat_field(NAME, set_ids, key, path).astype(np.int64).tolist():
        if not 1 <= number <= len(labels):
            raise DatasetError(
                f"{NAME}: {path}: {key} lists image {number}, but imagelabels.mat has {len(labels)} images"
            )
        items.append(str(image_dir / f"image_{number:05d}.jpg"))
        targets.append(int(labels[number - 1]) - 1)
    return items, targets


@register_dataset(NAME)
def read_flowers102(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> SourceData:
    """Read Oxford 102 Flowers; the published train and val splits together form the train set.

    Args:
        root: The folder holding ``imagelabels.mat`` or the one containing ``flowers-102/``.
        download: Download the three files from the publisher (MD5-checked) when absent.
        skip_bad_images: Skip missing and unreadable images (logged with a count) instead of failing.
        class_names: Display names replacing the built-in flower names (same order).

    Returns:
        The dataset; classes 1..max(label) in label order; images in ``setid.mat`` order.

    Raises:
        DatasetError: On a missing or malformed file, a missing image, or a failed download.
    """
    base = locate(NAME, root, MARKERS, (FOLDER, "flowers102"), LAYOUT, HINT, download, _fetch)
    labels_path, setid_path = base / "imagelabels.mat", base / "setid.mat"
    labels = mat_field(NAME, load_mat(NAME, labels_path, LAYOUT), "labels", labels_path).astype(np.int64)
    if labels.size == 0 or labels.min() < 1 or labels.max() > len(FLOWER_NAMES):
        raise DatasetError(f"{NAME}: {labels_path}: labels must lie in 1..{len(FLOWER_NAMES)}")
    num_classes = int(labels.max())
    set_ids = load_mat(NAME, setid_path, LAYOUT)
    image_dir = base / "jpg"
    trn = _split(set_ids, "trnid", setid_path, labels, image_dir)
    val = _split(set_ids, "valid", setid_path, labels, image_dir)
    tst = _split(set_ids, "tstid", setid_path, labels, image_dir)
    return checked_source(
        NAME,
        base,
        apply_class_names(NAME, FLOWER_NAMES[:num_classes], class_names),
        (trn[0] + val[0], trn[1] + val[1]),
        tst,
        skip_bad_images,
        PROMPT_TEMPLATES,
    )
