"""Cluttered Fashion-MNIST scenes: one item at a random place and scale among fragments of other items.

A testbed where the evidence is local and the right patches are known (after the cluttered-digits
setting of the attention literature: Mnih et al., NeurIPS 2014; Jaderberg et al., NeurIPS 2015).
Every image is a ``scene_size`` x ``scene_size`` grayscale canvas (default 96 px) holding

* **the item**: Fashion-MNIST image ``i`` (scene ``i`` of a split shows item ``i`` of that split and
  carries its label), resized (PIL bilinear) to a side of ``ITEM_SCALE`` (30-50 %) of the canvas and
  placed uniformly at random, wholly inside the canvas's central ``1 - 2 * ITEM_MARGIN`` square (the
  part the default evaluation crop, ``crop_ratio`` 0.875, keeps);
* **clutter**: ``scene_fragments`` (default 2) square fragments of *other* items: a crop of
  ``FRAGMENT_CROP`` (35-55 %) of a donor item's side, from its central region (where the ink is), resized
  to the side the donor would have at a scale drawn from ``ITEM_SCALE``, and placed anywhere on the
  canvas **outside the item's square** (the item stays whole; a fragment that finds no free place in
  ``PLACE_TRIES`` draws is left out). Fragments overlapping each other are combined with a pixel-wise
  maximum.

The item's **box** is the tight box of its non-zero pixels, mapped onto the canvas
(:attr:`Scenes.boxes`, fractions of the canvas side ``(x0, y0, x1, y1)``, x1/y1 exclusive); the
open-set split carries it for every test image (``OpenSetInfo.test_boxes``) to the evaluator, whose
localization metrics ask whether a net's patch relevance points at it.

Donors: a test scene's fragments come only from other test images; a training scene's only from
other training images **of its own side of the pretraining pool**: with ``pretrain_pool`` (a demo
CLIP card) the scenes of the labeled/unlabeled training images take fragments only from training
images outside the pool (and the pool's own scenes only from the pool); without a card, from any
other training image. Labels, class names, prompt templates, the 6/4 open-set split of the demo
configs and the ``pretrain_pool`` semantics (the card's images are dropped from the training set)
are those of ``fmnist_openset``; its cards apply here too (same training images, same indices).

Determinism: every layout number of every scene (item scale and place, donors, crops, fragment
scales and places) is drawn at once, per split, from ``numpy.random.default_rng([scene_seed,
split])`` over all scenes of the split, so scene ``i`` is the same whatever subset is rendered, and
the pixels are a pure function of those numbers and the Fashion-MNIST files. Scenes are rendered on
the fly, when a dataset takes them (:class:`Scenes` is a lazy sequence; ``numpy.asarray`` renders):
nothing is cached on disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import DatasetError
from .base import SourceData, register_dataset
from .fmnist import read_fmnist

logger = logging.getLogger(__name__)

NAME = "fmnist_cluttered"
#: Defaults of the dataset keys ``scene_size``, ``scene_fragments``, ``scene_seed``.
DEFAULT_SIZE = 96
DEFAULT_FRAGMENTS = 2
DEFAULT_SEED = 0
#: Side of the item (and of a fragment's donor) as a fraction of the canvas side.
ITEM_SCALE = (0.30, 0.50)
#: Margin kept free of the item on each side, as a fraction of the canvas (the 0.875 centre crop
#: removes 1/16 of each side).
ITEM_MARGIN = 1.0 / 16.0
#: Side of a fragment's crop as a fraction of its donor's side.
FRAGMENT_CROP = (0.35, 0.55)
#: Crops start at least this fraction of the donor's side from its border (items are centred).
FRAGMENT_INSET = 0.1
#: Candidate places drawn per fragment; it takes the first that leaves the item's square free.
PLACE_TRIES = 16
#: Smallest canvas: the item must fit with its margins at the smallest scale.
MIN_SIZE = 16
_SPLIT_CODE = {"train": 0, "test": 1}
_SOURCE_SIDE = 28


@dataclass
class Layout:
    """Every layout number of the scenes of one split (arrays over scenes ``[N]`` or ``[N, F]``).

    Attributes:
        size: Canvas side in pixels.
        item_side, item_x, item_y: The item's side and top-left corner on the canvas.
        donor: Source index of every fragment's donor item [N, F].
        crop_x, crop_y, crop_side: The fragment's crop in the donor's 28 px coordinates [N, F].
        frag_side, frag_x, frag_y: The fragment's side (0: left out, no free place) and top-left corner on the canvas [N, F].
        boxes: The item's tight box on the canvas, fractions of the side ``(x0, y0, x1, y1)`` [N, 4].
    """

    size: int
    item_side: np.ndarray
    item_x: np.ndarray
    item_y: np.ndarray
    donor: np.ndarray
    crop_x: np.ndarray
    crop_y: np.ndarray
    crop_side: np.ndarray
    frag_side: np.ndarray
    frag_x: np.ndarray
    frag_y: np.ndarray
    boxes: np.ndarray


def tight_boxes(images: np.ndarray) -> np.ndarray:
    """Tight box ``(c0, r0, c1, r1)`` (exclusive ends) of the non-zero pixels of each image [N, H, W].

    An all-zero image gets the whole frame.
    """
    images = np.asarray(images)
    n, h, w = images.shape
    rows: np.ndarray = np.any(images, axis=2)
    cols: np.ndarray = np.any(images, axis=1)
    out = np.empty((n, 4), dtype=np.int64)
    for axis_any, lo, hi, side in ((cols, 0, 2, w), (rows, 1, 3, h)):
        has = np.any(axis_any, axis=1)
        first = np.where(has, axis_any.argmax(axis=1), 0)
        last = np.where(has, side - axis_any[:, ::-1].argmax(axis=1), side)
        out[:, lo], out[:, hi] = first, last
    return out


def donor_groups(num_items: int, pool: Optional[np.ndarray]) -> list[np.ndarray]:
    """The donor sets of a split: ``[all]`` without a pool, else ``[outside the pool, the pool]``."""
    everything = np.arange(num_items, dtype=np.int64)
    if pool is None:
        return [everything]
    inside = np.zeros(num_items, dtype=bool)
    inside[np.asarray(pool, dtype=np.int64)] = True
    return [everything[~inside], everything[inside]]


def make_layout(
    items: np.ndarray,
    size: int = DEFAULT_SIZE,
    fragments: int = DEFAULT_FRAGMENTS,
    seed: int = DEFAULT_SEED,
    split: str = "train",
    groups: Optional[Sequence[np.ndarray]] = None,
) -> Layout:
    """Draw the layout of every scene of one split (vectorised; no pixels are rendered).

    Args:
        items: The split's Fashion-MNIST images [N, 28, 28] uint8 (scene ``i`` shows item ``i``).
        size: Canvas side.
        fragments: Clutter fragments per scene.
        seed: ``scene_seed``.
        split: ``"train"`` or ``"test"`` (part of the random stream, so the two splits differ).
        groups: Disjoint donor sets covering ``0..N-1`` (:func:`donor_groups`); a scene's donors come
            from its own group, never the scene's own item. Default: one group of all items.

    Returns:
        The layout.

    Raises:
        DatasetError: A canvas too small, a negative fragment count, or a group of fewer than 2 items
            when fragments are asked for.
    """
    n = len(items)
    size, fragments = int(size), int(fragments)
    if size < MIN_SIZE:
        raise DatasetError(f"{NAME}: scene_size must be at least {MIN_SIZE} px, got {size}")
    if fragments < 0:
        raise DatasetError(f"{NAME}: scene_fragments must be >= 0, got {fragments}")
    groups = list(groups) if groups is not None else [np.arange(n, dtype=np.int64)]
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split]])
    # the item: side, then a place wholly inside the central square
    lo_side = max(4, int(round(ITEM_SCALE[0] * size)))
    hi_side = max(lo_side, int(round(ITEM_SCALE[1] * size)))
    margin = int(round(ITEM_MARGIN * size))
    item_side = rng.integers(lo_side, hi_side + 1, size=n)
    span = np.maximum(size - 2 * margin - item_side, 0)
    item_x = margin + np.floor(rng.random(n) * (span + 1)).astype(np.int64)
    item_y = margin + np.floor(rng.random(n) * (span + 1)).astype(np.int64)
    # fragments: donor (within the scene's group, never itself), crop, scale, place
    f = fragments
    donor = np.zeros((n, f), dtype=np.int64)
    u = rng.random((n, f))
    if f:
        for group in groups:
            group = np.sort(np.asarray(group, dtype=np.int64))
            if len(group) == 0:
                continue
            if len(group) < 2:
                raise DatasetError(f"{NAME}: a donor set of {len(group)} image(s) cannot give fragments of other items")
            pos = np.searchsorted(group, group)  # position of each member in its (sorted) group
            pick = np.floor(u[group] * (len(group) - 1)).astype(np.int64)  # among the other members
            pick = pick + (pick >= pos[:, None])  # skip the scene's own item
            donor[group] = group[pick]
    donor_side = rng.integers(lo_side, hi_side + 1, size=(n, f))
    crop_frac = rng.uniform(FRAGMENT_CROP[0], FRAGMENT_CROP[1], size=(n, f))
    crop_side = np.clip(np.round(crop_frac * _SOURCE_SIDE).astype(np.int64), 2, _SOURCE_SIDE)
    inset = int(round(FRAGMENT_INSET * _SOURCE_SIDE))
    crop_span = np.maximum(_SOURCE_SIDE - 2 * inset - crop_side, 0)
    crop_x = inset + np.floor(rng.random((n, f)) * (crop_span + 1)).astype(np.int64)
    crop_y = inset + np.floor(rng.random((n, f)) * (crop_span + 1)).astype(np.int64)
    frag_side = np.maximum(1, np.round(crop_side * donor_side / _SOURCE_SIDE).astype(np.int64))
    frag_x, frag_y, frag_side = _place_fragments(rng, size, frag_side, item_x, item_y, item_side)
    # the item's tight box, from its 28 px tight box scaled to its side on the canvas
    tb = tight_boxes(items).astype(np.float64)
    scale = item_side.astype(np.float64) / _SOURCE_SIDE
    x0 = item_x + np.floor(tb[:, 0] * scale)
    y0 = item_y + np.floor(tb[:, 1] * scale)
    x1 = item_x + np.ceil(tb[:, 2] * scale)
    y1 = item_y + np.ceil(tb[:, 3] * scale)
    boxes = np.stack([x0, y0, x1, y1], axis=1) / float(size)
    return Layout(size, item_side, item_x, item_y, donor, crop_x, crop_y, crop_side, frag_side, frag_x, frag_y, boxes)


def _place_fragments(
    rng: np.random.Generator,
    size: int,
    frag_side: np.ndarray,
    item_x: np.ndarray,
    item_y: np.ndarray,
    item_side: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Places of the fragments [N, F] on the canvas, none overlapping its scene's item square.

    Every fragment gets :data:`PLACE_TRIES` candidate places, uniform over the canvas, and takes the
    first that leaves the item's square untouched; a fragment with no such candidate is dropped (its
    side set to 0, so nothing is rendered). The item stays whole: the class is decided by the item
    alone and the clutter is where the item is not, as in Cluttered MNIST's non-overlapping variant.

    Returns:
        ``(frag_x, frag_y, frag_side)``.
    """
    n, f = frag_side.shape
    span = np.maximum(size - frag_side, 0)[..., None]  # [N, F, 1]
    cand_x = np.floor(rng.random((n, f, PLACE_TRIES)) * (span + 1)).astype(np.int64)
    cand_y = np.floor(rng.random((n, f, PLACE_TRIES)) * (span + 1)).astype(np.int64)
    side = frag_side[..., None]
    ix, iy, iside = item_x[:, None, None], item_y[:, None, None], item_side[:, None, None]
    apart = (cand_x + side <= ix) | (cand_x >= ix + iside) | (cand_y + side <= iy) | (cand_y >= iy + iside)
    first = apart.argmax(axis=2)  # the first free candidate (0 when none is free; masked below)
    found = apart.any(axis=2)
    frag_x = np.take_along_axis(cand_x, first[..., None], axis=2)[..., 0]
    frag_y = np.take_along_axis(cand_y, first[..., None], axis=2)[..., 0]
    return frag_x, frag_y, np.where(found, frag_side, 0)


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if img.shape == (side, side):
        return img
    return np.asarray(Image.fromarray(img).resize((int(side), int(side)), Image.Resampling.BILINEAR))


def _paste_max(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h, w = patch.shape
    region = canvas[y : y + h, x : x + w]
    np.maximum(region, patch[: region.shape[0], : region.shape[1]], out=region)


def render_scene(items: np.ndarray, layout: Layout, i: int) -> np.ndarray:
    """Render scene ``i`` of a split: uint8 [size, size] (a pure function of ``items`` and ``layout``)."""
    canvas = np.zeros((layout.size, layout.size), dtype=np.uint8)
    for j in range(layout.donor.shape[1]):
        if layout.frag_side[i, j] == 0:  # no free place was found for this fragment
            continue
        cx, cy, cs = int(layout.crop_x[i, j]), int(layout.crop_y[i, j]), int(layout.crop_side[i, j])
        crop = np.ascontiguousarray(items[int(layout.donor[i, j]), cy : cy + cs, cx : cx + cs])
        _paste_max(
            canvas, _resize(crop, int(layout.frag_side[i, j])), int(layout.frag_x[i, j]), int(layout.frag_y[i, j])
        )
    item = _resize(np.ascontiguousarray(items[i]), int(layout.item_side[i]))
    _paste_max(canvas, item, int(layout.item_x[i]), int(layout.item_y[i]))
    return canvas


class Scenes:
    """A lazy sequence of scenes: ``len``, ``scenes[i]`` (renders one), ``scenes.take(idx)`` (a lazy
    subset, same scenes), ``numpy.asarray(scenes)`` (renders all, [n, size, size] uint8).

    Args:
        items: The split's Fashion-MNIST images [N, 28, 28].
        layout: Their layout (:func:`make_layout`).
        rows: Which scenes this sequence holds, in order (default all).
    """

    def __init__(self, items: np.ndarray, layout: Layout, rows: Optional[np.ndarray] = None) -> None:
        self.items = items
        self.layout = layout
        self.rows = np.arange(len(items), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Union[int, np.integer, slice, Sequence[int], np.ndarray]) -> Any:
        if isinstance(index, (int, np.integer)):
            return render_scene(self.items, self.layout, int(self.rows[int(index)]))
        return self.take(np.arange(len(self.rows))[index] if isinstance(index, slice) else np.asarray(index))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Union[Sequence[int], np.ndarray]) -> Scenes:
        """The scenes at ``indices`` (positions in this sequence), still lazy."""
        return Scenes(self.items, self.layout, self.rows[np.asarray(indices, dtype=np.int64)])

    @property
    def boxes(self) -> np.ndarray:
        """The items' boxes [n, 4], fractions of the canvas side ``(x0, y0, x1, y1)``."""
        return self.layout.boxes[self.rows]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rows), self.layout.size, self.layout.size)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.uint8)
        for j, row in enumerate(self.rows.tolist()):
            out[j] = render_scene(self.items, self.layout, row)
        return out if dtype is None else out.astype(dtype)


def _pool_of(card_path: Optional[str], num_train: int) -> Optional[np.ndarray]:
    if not card_path:
        return None
    from .pretrain_pool import load_card, pool_indices

    return pool_indices(load_card(card_path), num_train, NAME)


@register_dataset(NAME)
def read_fmnist_cluttered(
    root: Optional[str],
    *,
    download: bool = False,
    skip_bad_images: bool = False,
    class_names: Optional[Sequence[str]] = None,
    scene_size: int = DEFAULT_SIZE,
    scene_fragments: int = DEFAULT_FRAGMENTS,
    scene_seed: int = DEFAULT_SEED,
    pretrain_pool: Optional[str] = None,
) -> SourceData:
    """Cluttered scenes made of the Fashion-MNIST files that ``fmnist_openset`` reads (see the module doc).

    Args:
        root: As :func:`~usb_cfsg.datasets.fmnist.read_fmnist`.
        download: As ``read_fmnist``.
        skip_bad_images: Ignored.
        class_names: Display names replacing the 10 class names.
        scene_size: Canvas side in pixels.
        scene_fragments: Clutter fragments per scene.
        scene_seed: Seed of the layouts.
        pretrain_pool: A demo CLIP card: training scenes take fragments from their own side of its pool.

    Returns:
        The dataset; ``train_items`` / ``test_items`` are lazy :class:`Scenes` (uint8 [size, size] each)
        carrying the items' boxes.
    """
    base = read_fmnist(root, download=download, skip_bad_images=skip_bad_images, class_names=class_names)
    start = time.perf_counter()
    train_items = np.asarray(base.train_items)
    test_items = np.asarray(base.test_items)
    pool = _pool_of(pretrain_pool, len(train_items))
    train_layout = make_layout(
        train_items, scene_size, scene_fragments, scene_seed, "train", donor_groups(len(train_items), pool)
    )
    test_layout = make_layout(test_items, scene_size, scene_fragments, scene_seed, "test")
    logger.info(
        "%s: layouts of %d train / %d test scenes (%d px, %d fragments, scene_seed %d, donors %s) in %.2f s; "
        "pixels are rendered when a dataset takes them",
        NAME,
        len(train_items),
        len(test_items),
        int(scene_size),
        int(scene_fragments),
        int(scene_seed),
        "outside/inside the pretraining pool" if pool is not None else "all other training images",
        time.perf_counter() - start,
    )
    return SourceData(
        name=NAME,
        class_names=list(base.class_names),
        train_items=Scenes(train_items, train_layout),  # type: ignore[arg-type]
        train_targets=base.train_targets,
        test_items=Scenes(test_items, test_layout),  # type: ignore[arg-type]
        test_targets=base.test_targets,
        prompt_templates=base.prompt_templates,
    )
