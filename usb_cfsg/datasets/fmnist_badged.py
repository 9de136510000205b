"""Badged Fashion-MNIST: a large item carrying a small coloured mark; classes differ by the mark alone.

The fine-grained testbed of this project (a seen and an unseen class differ only by a small local
detail that a global image embedding, trained mostly on the general attribute, misses). Every image is
a ``scene_size`` x ``scene_size`` RGB canvas (default 96 px: a 6 x 6 grid of 16 px patches) holding

* **the item**: Fashion-MNIST image ``i`` (image ``i`` of a split), gray, resized (PIL bilinear) to
  :data:`ITEM_SCALE` (75-87.5 %) of the canvas side at a random place inside the central square that
  the default 0.875 evaluation crop keeps;
* **the mark** (badge): an 8 x 8 handwritten digit of scikit-learn's bundled ``digits`` set, resized
  to ``badge_size`` px (default 32, 2 x 2 patches: a 16 px mark is learned by nothing trained on the
  demo backbone, see docs/results/badged.md), drawn in :data:`MARK_RGB` (a red ink, alpha =
  the digit's intensity) at a random place where the item's ink covers at least
  :data:`MIN_COVER` of the mark's square (judged on the 28 px source image; the place with the most ink
  when none does; the item, and so the mark, lies wholly inside the central square). Which of the
  three ``badge_marks`` an image gets is drawn per image; the digit *instance* comes from the split's
  own half of each digit's instances (training and test images never share a drawn digit).

Classes (``class_split: first`` with ``num_classes: 2 * len(badge_items)`` makes the intended split):

* **seen**: every item of ``badge_items`` with each of the first two marks, ``"<item> with a <mark>
  badge"``, item-major;
* **near-OOD**: the same items with the third mark (they differ from seen classes in the mark only);
* **far-OOD**: every other Fashion-MNIST item, one class per item (its images carry any of the three
  marks), named by the item.

:attr:`SourceData.class_groups` maps near-OOD classes to ``"near"`` and far-OOD ones to ``"far"``; the
evaluator reports AUROC and FPR95 per group. Every image carries its mark's box
(:attr:`Badged.boxes`, fractions of the canvas ``(x0, y0, x1, y1)``), which the localization metrics
read. ``badge_erase: true`` draws the test images without their mark (the cue erased: a control under
which a near-OOD image and its seen twin are the same picture, so near-OOD AUROC must fall to chance).

The mark is the only colour in the image: the oracle controls (``sfm_oracle``) find its patches from the
network's input alone (:func:`usb_cfsg.nets.oracle.mark_patches`), with no box plumbing through the
augmentations; a coloured mark is also easier to *find* than a gray one, so a method that cannot use it
here is not held back by the search.

Training image ``i`` is Fashion-MNIST training image ``i`` (same order and labels as ``fmnist_openset``):
a demo CLIP card made for this dataset applies its ``pretrain_pool`` as for the other Fashion-MNIST
testbeds. Layouts (item place and scale, mark choice, instance, place) are drawn per split from
``numpy.random.default_rng([scene_seed, split, 7])``; images are rendered when a dataset takes them.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .fmnist import CLASS_NAMES as ITEM_NAMES
from .fmnist import read_fmnist

logger = logging.getLogger(__name__)

NAME = "fmnist_badged"
#: Defaults: seen items (T-shirt/top, Pullover, Coat, Bag), marks (two seen digits, then the near-OOD one).
DEFAULT_ITEMS = (0, 2, 4, 8)
DEFAULT_MARKS = (0, 1, 4)
DEFAULT_SIZE = 96
DEFAULT_BADGE = 32
#: Item side as a fraction of the canvas side.
ITEM_SCALE = (0.75, 0.875)
#: Margin kept free on each side (the 0.875 centre crop removes 1/16 of each side).
MARGIN = 1.0 / 16.0
#: Ink colour of the mark; the items are gray, so the mark is the image's only colour.
MARK_RGB = (224, 32, 32)
#: Item pixels at or above this count as ink when placing the mark.
INK_LEVEL = 48
#: Share of the mark's square the item's ink must cover at a valid place.
MIN_COVER = 0.9
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_CODE = {"train": 0, "test": 1}
SOURCE_SIDE = 28


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8 x 8 digits (1,797 images, values 0..1) and their labels, read once per
    process (every split and every dataset of a run reads them); the arrays are read-only."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64) / 16.0
    labels = np.asarray(d.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if img.shape == (side, side):
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))
    f = Image.fromarray(img.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(f), 0.0, 1.0)


@dataclass
class BadgeLayout:
    """Every layout number of one split's images (arrays over images).

    Attributes:
        size: Canvas side.
        badge: Mark side.
        item_side, item_x, item_y: The item's side and top-left corner on the canvas.
        mark: Which of the three marks (0, 1: seen marks; 2: the near-OOD mark) [N].
        instance: Index into scikit-learn's digits of the drawn instance [N].
        mark_x, mark_y: Top-left corner of the mark on the canvas [N].
        erase: Whether the mark is left out (``badge_erase`` on the test split).
    """

    size: int
    badge: int
    item_side: np.ndarray
    item_x: np.ndarray
    item_y: np.ndarray
    mark: np.ndarray
    instance: np.ndarray
    mark_x: np.ndarray
    mark_y: np.ndarray
    erase: bool = False

    @property
    def boxes(self) -> np.ndarray:
        """The marks' boxes [N, 4], fractions of the canvas side ``(x0, y0, x1, y1)``."""
        b = np.stack([self.mark_x, self.mark_y, self.mark_x + self.badge, self.mark_y + self.badge], axis=1)
        return b.astype(np.float64) / float(self.size)


def _place_item(items: np.ndarray, layout_rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    """Side and top-left corner of every item: wholly inside the canvas's margins."""
    n = len(items)
    lo, hi = int(round(ITEM_SCALE[0] * size)), int(round(ITEM_SCALE[1] * size))
    margin = int(round(MARGIN * size))
    side = layout_rng.integers(lo, hi + 1, size=n)
    span = np.maximum(size - 2 * margin - side, 0)
    x = margin + np.floor(layout_rng.random(n) * (span + 1)).astype(np.int64)
    y = margin + np.floor(layout_rng.random(n) * (span + 1)).astype(np.int64)
    return side, x, y


def _mark_places(items: np.ndarray, side: int, badge: int, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the marks, relative to the item's square, for items drawn at side ``side``.

    Places are chosen on the 28 px source image, with the mark's square at its source size
    ``ceil(badge * 28 / side)`` (so the mark never leaves the item's square): uniform (``u`` in [0, 1)
    per item) among the places whose square the item's ink (pixels >= :data:`INK_LEVEL`) covers at
    least :data:`MIN_COVER` of, else the place with the most ink. Vectorised over the items.
    """
    b = min(SOURCE_SIDE, int(math.ceil(badge * SOURCE_SIDE / side)))
    ink = np.pad((items >= INK_LEVEL).astype(np.int32), ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    cover = ink[:, b:, b:] - ink[:, :-b, b:] - ink[:, b:, :-b] + ink[:, :-b, :-b]  # [n, 29 - b, 29 - b]
    n, w = cover.shape[0], cover.shape[2]
    flat = cover.reshape(n, -1)
    valid = flat >= MIN_COVER * b * b
    count = valid.sum(1)
    k = np.minimum(np.floor(u * count), np.maximum(count - 1, 0))
    kth = (valid.cumsum(1) > k[:, None]).argmax(1)  # the k-th valid place
    pick = np.where(count > 0, kth, flat.argmax(1))
    scale = side / SOURCE_SIDE
    return np.floor((pick % w) * scale).astype(np.int64), np.floor((pick // w) * scale).astype(np.int64)


def make_badge_layout(
    items: np.ndarray,
    digit_labels: np.ndarray,
    marks: Sequence[int],
    size: int = DEFAULT_SIZE,
    badge: int = DEFAULT_BADGE,
    seed: int = 0,
    split: str = "train",
    erase: bool = False,
) -> BadgeLayout:
    """Draw the layout of every image of one split.

    Args:
        items: The split's Fashion-MNIST images [N, 28, 28] uint8.
        digit_labels: Labels of scikit-learn's digits.
        marks: The three mark digits (seen, seen, near-OOD).
        size: Canvas side.
        badge: Mark side in pixels.
        seed: ``scene_seed``.
        split: ``"train"`` or ``"test"``: selects the half of each digit's instances and the random stream.
        erase: Draw no mark (the layout, boxes included, is the same as with the mark).

    Returns:
        The layout.
    """
    n = len(items)
    if not 2 <= badge <= int(round(ITEM_SCALE[0] * size)):
        raise DatasetError(
            f"{NAME}: badge_size must lie in [2, {int(round(ITEM_SCALE[0] * size))}] for a {size} px canvas "
            f"(the smallest item's side), got {badge}"
        )
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], 7])
    side, x, y = _place_item(items, rng, size)
    mark = rng.integers(0, len(marks), size=n)
    # each digit's instances split in halves once (fixed seed): training draws from one, test from the other
    halves = np.random.default_rng(12345)
    instance = np.zeros(n, dtype=np.int64)
    u_inst = rng.random(n)
    for j, digit in enumerate(marks):
        own = halves.permutation(np.flatnonzero(digit_labels == digit))
        own = own[: len(own) // 2] if split == "train" else own[len(own) // 2 :]
        rows = np.flatnonzero(mark == j)
        instance[rows] = own[np.floor(u_inst[rows] * len(own)).astype(np.int64)]
    u_place = rng.random(n)
    mark_x, mark_y = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for s in np.unique(side).tolist():
        rows = np.flatnonzero(side == s)
        dx, dy = _mark_places(items[rows], int(s), badge, u_place[rows])
        mark_x[rows], mark_y[rows] = x[rows] + dx, y[rows] + dy
    return BadgeLayout(size, int(badge), side, x, y, mark, instance, mark_x, mark_y, bool(erase))


def render_badged(items: np.ndarray, digits: np.ndarray, layout: BadgeLayout, i: int) -> np.ndarray:
    """Render image ``i`` of a split: uint8 [size, size, 3] (a pure function of its inputs)."""
    size, s = layout.size, int(layout.item_side[i])
    gray = np.zeros((size, size), dtype=np.uint8)
    gray[layout.item_y[i] : layout.item_y[i] + s, layout.item_x[i] : layout.item_x[i] + s] = _resize(items[i], s)
    out = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float64)
    if not layout.erase:
        b, mx, my = layout.badge, int(layout.mark_x[i]), int(layout.mark_y[i])
        alpha = _resize(digits[int(layout.instance[i])], b)[:, :, None]
        region = out[my : my + b, mx : mx + b]
        out[my : my + b, mx : mx + b] = (1.0 - alpha) * region + alpha * np.asarray(MARK_RGB, dtype=np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class Badged:
    """A lazy sequence of badged images (``len``, ``[i]``, ``take``, ``boxes``, ``numpy.asarray``).

    Args:
        items: The split's Fashion-MNIST images [N, 28, 28].
        digits: scikit-learn's digits [M, 8, 8] in [0, 1].
        layout: The split's layout.
        rows: Which images this sequence holds, in order (default all).
    """

    def __init__(
        self, items: np.ndarray, digits: np.ndarray, layout: BadgeLayout, rows: Optional[np.ndarray] = None
    ) -> None:
        self.items, self.digits, self.layout = items, digits, layout
        self.rows = np.arange(len(items), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Union[int, np.integer, slice, Sequence[int], np.ndarray]) -> Any:
        if isinstance(index, (int, np.integer)):
            return render_badged(self.items, self.digits, self.layout, int(self.rows[int(index)]))
        return self.take(np.arange(len(self.rows))[index] if isinstance(index, slice) else np.asarray(index))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Union[Sequence[int], np.ndarray]) -> Badged:
        """The images at ``indices`` (positions in this sequence), still lazy."""
        return Badged(self.items, self.digits, self.layout, self.rows[np.asarray(indices, dtype=np.int64)])

    @property
    def boxes(self) -> np.ndarray:
        """The marks' boxes [n, 4] (fractions of the canvas side)."""
        return self.layout.boxes[self.rows]

    @property
    def marks(self) -> np.ndarray:
        """Which mark (0, 1, 2) each image carries [n]."""
        return self.layout.mark[self.rows]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.layout.size, self.layout.size, 3)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.uint8)
        for j, row in enumerate(self.rows.tolist()):
            out[j] = render_badged(self.items, self.digits, self.layout, row)
        return out if dtype is None else out.astype(dtype)


def _as_indices(values: Optional[Sequence[Any]], names: Sequence[str], key: str, default: Sequence[int]) -> List[int]:
    if values is None:
        return list(default)
    out = []
    for v in values:
        if isinstance(v, str) and not v.strip().isdigit():
            if v not in names:
                import difflib

                close = difflib.get_close_matches(v, names, n=3)
                raise DatasetError(f"{NAME}: {key} entry {v!r} is not a class name; did you mean {close or names}?")
            out.append(names.index(v))
        else:
            out.append(int(v))
    return out


def badge_classes(items: Sequence[int], marks: Sequence[int]) -> tuple[list[str], dict[int, str]]:
    """Class names in the dataset's order (seen pairs, near-OOD pairs, far items) and the unseen groups."""
    seen = [f"{ITEM_NAMES[i]} with a {DIGIT_WORDS[m]} badge" for i in items for m in marks[:2]]
    near = [f"{ITEM_NAMES[i]} with a {DIGIT_WORDS[marks[2]]} badge" for i in items]
    far = [ITEM_NAMES[i] for i in range(len(ITEM_NAMES)) if i not in items]
    groups = {len(seen) + j: "near" for j in range(len(near))}
    groups.update({len(seen) + len(near) + j: "far" for j in range(len(far))})
    return seen + near + far, groups


def badge_targets(item_labels: np.ndarray, mark: np.ndarray, items: Sequence[int]) -> np.ndarray:
    """Class of every image from its Fashion-MNIST label and its mark (see :func:`badge_classes`)."""
    k_items = len(items)
    far_items = [i for i in range(len(ITEM_NAMES)) if i not in items]
    out = np.empty(len(item_labels), dtype=np.int64)
    pos = {c: j for j, c in enumerate(items)}
    for row, (lab, m) in enumerate(zip(item_labels.tolist(), mark.tolist())):
        if lab in pos:
            out[row] = pos[lab] * 2 + m if m < 2 else 2 * k_items + pos[lab]
        else:
            out[row] = 3 * k_items + far_items.index(lab)
    return out


@register_dataset(NAME)
def read_fmnist_badged(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
    scene_size: int = DEFAULT_SIZE,
    scene_seed: int = 0,
    badge_size: int = DEFAULT_BADGE,
    badge_items: Optional[Sequence[Any]] = None,
    badge_marks: Optional[Sequence[Any]] = None,
    badge_erase: bool = False,
) -> SourceData:
    """Badged Fashion-MNIST images (see the module doc) from the files ``fmnist_openset`` reads.

    Args:
        root: As :func:`~usb_cfsg.datasets.fmnist.read_fmnist`.
        download: As ``read_fmnist``.
        skip_bad_images: Ignored.
        class_names: Display names replacing the generated class names (one per class).
        scene_size: Canvas side in pixels.
        scene_seed: Seed of the layouts.
        badge_size: Side of the mark in pixels.
        badge_items: The items with seen and near-OOD classes (Fashion-MNIST names or indices).
        badge_marks: Three digits: two seen marks, then the near-OOD mark.
        badge_erase: Draw the test images without their mark.

    Returns:
        The dataset; ``train_items`` / ``test_items`` are lazy :class:`Badged` sequences (uint8
        [size, size, 3]) carrying the marks' boxes; ``class_groups`` names near/far-OOD classes.
    """
    items = _as_indices(badge_items, ITEM_NAMES, "badge_items", DEFAULT_ITEMS)
    marks = _as_indices(badge_marks, DIGIT_WORDS, "badge_marks", DEFAULT_MARKS)
    if len(marks) != 3 or len(set(marks)) != 3 or not all(0 <= m <= 9 for m in marks):
        raise DatasetError(f"{NAME}: badge_marks needs three different digits 0-9 (seen, seen, near-OOD), got {marks}")
    if not items or len(set(items)) != len(items) or not all(0 <= i < len(ITEM_NAMES) for i in items):
        raise DatasetError(f"{NAME}: badge_items needs different Fashion-MNIST items 0-9 (or names), got {items}")
    base = read_fmnist(root, download=download, skip_bad_images=skip_bad_images)
    start = time.perf_counter()
    digits, digit_labels = _digits()
    seqs = {}
    targets = {}
    for split, imgs, labels in (
        ("train", base.train_items, base.train_targets),
        ("test", base.test_items, base.test_targets),
    ):
        arr = np.asarray(imgs)
        layout = make_badge_layout(
            arr, digit_labels, marks, scene_size, badge_size, scene_seed, split, erase=badge_erase and split == "test"
        )
        seqs[split] = Badged(arr, digits, layout)
        targets[split] = badge_targets(np.asarray(labels, dtype=np.int64), layout.mark, items)
    names, groups = badge_classes(items, marks)
    if class_names is not None:
        if len(class_names) != len(names):
            raise DatasetError(f"{NAME}: class_names needs {len(names)} names, got {len(class_names)}")
        names = list(class_names)
    logger.info(
        "%s: layouts of %d train / %d test images (%d px, %d px mark, items %s, marks %s, scene_seed %d%s) in %.2f s",
        NAME,
        len(seqs["train"]),
        len(seqs["test"]),
        int(scene_size),
        int(badge_size),
        items,
        marks,
        int(scene_seed),
        ", test marks erased" if badge_erase else "",
        time.perf_counter() - start,
    )
    return SourceData(
        name=NAME,
        class_names=names,
        train_items=seqs["train"],  # type: ignore[arg-type]
        train_targets=targets["train"],
        test_items=seqs["test"],  # type: ignore[arg-type]
        test_targets=targets["test"],
        prompt_templates=base.prompt_templates,
        class_groups=groups,
    )
