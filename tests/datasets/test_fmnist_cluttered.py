"""fmnist_cluttered: determinism, boxes, donors (test from test, train from its side of the pool), the split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.datasets.conftest import needs_debian
from tests.datasets.replicas import write_fmnist_replica
from usb_cfsg.datasets import build_openset_datasets, fmnist_cluttered, read_source
from usb_cfsg.datasets.fmnist_cluttered import Scenes, donor_groups, make_layout, render_scene, tight_boxes
from usb_cfsg.errors import DatasetError


def _items(n: int, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST-like items: a zero background and a random rectangle of ink per image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(0, 10, size=2)
        r1, c1 = rng.integers(18, 29, size=2)
        out[i, r0:r1, c0:c1] = rng.integers(40, 256, size=(r1 - r0, c1 - c0))
    return out


def _card(path: Path, pool: np.ndarray, num_train: int, dataset: str = "fmnist_openset") -> Path:
    path.write_text(
        json.dumps({"dataset": dataset, "pool": {"num_train": num_train, "indices": [int(i) for i in pool]}})
    )
    return path


def test_tight_boxes() -> None:
    imgs = np.zeros((3, 5, 6), dtype=np.uint8)
    imgs[0, 1:3, 2:5] = 7
    imgs[1, 4, 0] = 1
    assert tight_boxes(imgs).tolist() == [[2, 1, 5, 3], [0, 4, 1, 5], [0, 0, 6, 5]]  # empty: whole frame


def test_layout_is_deterministic_and_subsets_render_the_same_scenes() -> None:
    items = _items(12)
    a, b = make_layout(items, 24, 3, seed=5), make_layout(items, 24, 3, seed=5)
    for field in ("item_side", "item_x", "donor", "crop_x", "frag_x", "boxes"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(make_layout(items, 24, 3, seed=6).item_x, a.item_x)
    assert not np.array_equal(make_layout(items, 24, 3, seed=5, split="test").item_x, a.item_x)
    scenes = Scenes(items, a)
    full = np.asarray(scenes)
    assert full.shape == (12, 24, 24) and full.dtype == np.uint8
    sub = scenes.take(np.array([7, 2]))
    assert np.array_equal(np.asarray(sub), full[[7, 2]])
    assert np.array_equal(sub[1], full[2]) and np.array_equal(scenes[3:5].boxes, a.boxes[3:5])
    assert np.array_equal(sub.take([0]).boxes, a.boxes[[7]])
    assert np.array_equal(np.asarray(Scenes(items, b)), full)  # bit-identical re-render


def test_boxes_hold_the_item() -> None:
    items = _items(20, seed=1)
    layout = make_layout(items, 32, 0, seed=0)  # no clutter: every ink pixel is the item's
    size = layout.size
    for i in range(len(items)):
        canvas = render_scene(items, layout, i)
        x0, y0, x1, y1 = layout.boxes[i] * size
        ys, xs = np.nonzero(canvas)
        # bilinear resizing may bleed by one pixel past the scaled tight box
        assert xs.min() >= x0 - 1 and xs.max() < x1 + 1 and ys.min() >= y0 - 1 and ys.max() < y1 + 1
        # the box lies in the item's square, which lies inside the margins
        margin = round(fmnist_cluttered.ITEM_MARGIN * size)
        sx, sy, side = layout.item_x[i], layout.item_y[i], layout.item_side[i]
        assert sx <= x0 and x1 <= sx + side and sy <= y0 and y1 <= sy + side
        assert margin <= sx and sx + side <= size - margin
    sides = layout.item_side / size
    assert sides.min() >= fmnist_cluttered.ITEM_SCALE[0] - 0.05 and sides.max() <= fmnist_cluttered.ITEM_SCALE[1] + 0.05


def test_clutter_leaves_the_item_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items(40, seed=2)
    layout = make_layout(items, 48, 6, seed=3)
    alone = make_layout(items, 48, 0, seed=3)  # the same item places (drawn before the fragments)
    assert np.array_equal(layout.item_x, alone.item_x) and np.array_equal(layout.item_side, alone.item_side)
    placed = layout.frag_side > 0
    assert placed.mean() > 0.9  # a 48 px canvas has room beside the item for nearly every fragment
    for i in range(len(items)):
        x, y, side = layout.item_x[i], layout.item_y[i], layout.item_side[i]
        fx, fy, fs = layout.frag_x[i], layout.frag_y[i], layout.frag_side[i]
        apart = (fx + fs <= x) | (fx >= x + side) | (fy + fs <= y) | (fy >= y + side)
        assert apart[placed[i]].all()
        # the item's square renders exactly as without clutter; dropped fragments draw nothing
        sq = np.s_[y : y + side, x : x + side]
        assert np.array_equal(render_scene(items, layout, i)[sq], render_scene(items, alone, i)[sq])
    # an item filling the canvas leaves no room: every fragment is left out, the scene is the item alone
    monkeypatch.setattr(fmnist_cluttered, "ITEM_SCALE", (0.85, 0.87))
    crowded, bare = make_layout(items, 32, 4, seed=0), make_layout(items, 32, 0, seed=0)
    assert (crowded.frag_side == 0).all()
    assert np.array_equal(render_scene(items, crowded, 0), render_scene(items, bare, 0))


def test_donors_never_the_item_and_stay_in_their_group() -> None:
    items = _items(30)
    pool = np.arange(0, 30, 3)
    groups = donor_groups(30, pool)
    layout = make_layout(items, 24, 6, seed=0, groups=groups)
    inside = np.isin(np.arange(30), pool)
    for i in range(30):
        assert (layout.donor[i] != i).all()
        assert (np.isin(layout.donor[i], pool) == inside[i]).all()
    assert len(np.unique(layout.donor)) > 15  # spread over the group, not a few donors
    with pytest.raises(DatasetError, match="cannot give fragments"):
        make_layout(items[:1], 24, 2)
    with pytest.raises(DatasetError, match="scene_size must be at least"):
        make_layout(items, 8, 2)


def test_reader_and_split_carry_boxes_and_respect_the_pool(tmp_path: Path, no_debian: Path, args_factory) -> None:
    write_fmnist_replica(tmp_path / "data", num_train=60, num_test=20)
    plain = read_source("fmnist_openset", str(tmp_path / "data"))
    src = read_source("fmnist_cluttered", str(tmp_path / "data"), scene_size=24, scene_fragments=2)
    assert src.class_names == plain.class_names and np.array_equal(src.train_targets, plain.train_targets)
    assert np.asarray(src.test_items).shape == (20, 24, 24)
    assert np.array_equal(src.test_items.layout.donor.ravel() < 20, np.ones(40, bool))  # test donors: test images
    from usb_cfsg_tools.demo_clip import select_pool

    pool = select_pool(plain.train_targets, 0.5, seed=0)
    card = _card(tmp_path / "card.json", pool, 60)
    pooled = read_source("fmnist_cluttered", str(tmp_path / "data"), scene_size=24, pretrain_pool=str(card))
    donors = pooled.train_items.layout.donor
    outside = np.setdiff1d(np.arange(60), pool)
    assert np.isin(donors[outside], outside).all() and np.isin(donors[pool], pool).all()

    args = args_factory(
        dataset="fmnist_cluttered",
        data_dir=str(tmp_path / "data"),
        num_classes=6,
        num_labels=12,
        img_size=16,
        crop_ratio=1.0,
        pretrain_pool=str(card),
        scene_size=24,
        scene_fragments=2,
        scene_seed=3,
    )
    datasets, info = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, str(tmp_path / "run"))
    assert info.dataset == "fmnist_cluttered"
    assert info.test_boxes is not None and info.test_boxes.shape == (len(datasets["test_open"]), 4)
    assert info.eval_boxes is not None and info.eval_boxes.shape == (len(datasets["eval"]), 4)
    assert len(datasets["train_ulb"]) == 30  # the pool is gone
    assert datasets["train_lb"].data.shape[1:] == (24, 24)
    direct = read_source("fmnist_cluttered", str(tmp_path / "data"), scene_size=24, scene_fragments=2, scene_seed=3)
    test_idx = info.split.test_indices
    assert np.array_equal(info.test_boxes, direct.test_items.boxes[test_idx])
    assert np.array_equal(datasets["test_open"].data, np.asarray(direct.test_items)[test_idx])
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["config"]["scene_size"] == 24 and record["config"]["scene_seed"] == 3
    assert "lb_files" not in record
    # an image of the dataset, through the evaluation transform
    x, _ = datasets["eval"].__sample__(0)
    assert x.size == (24, 24) and x.mode == "RGB"


@needs_debian
def test_real_fashion_mnist_scenes() -> None:
    src = read_source("fmnist_cluttered", None, scene_size=48, scene_fragments=4)
    plain = read_source("fmnist_openset", None)
    assert len(src.train_items) == 60000 and len(src.test_items) == 10000
    assert np.array_equal(src.test_targets, plain.test_targets)
    some = np.asarray(src.test_items.take(np.arange(5)))
    assert some.shape == (5, 48, 48) and some.max() > 0
    boxes = src.test_items.boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert (src.test_items.layout.donor < 10000).all()
