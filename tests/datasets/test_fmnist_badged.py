"""fmnist_badged: classes and groups, where the mark is, disjoint digit instances, the erased control, the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.datasets.conftest import make_args
from tests.datasets.replicas import write_fmnist_replica
from usb_cfsg.datasets import build_openset_datasets, read_source
from usb_cfsg.datasets.fmnist_badged import (
    MARK_RGB,
    Badged,
    badge_classes,
    badge_targets,
    make_badge_layout,
    render_badged,
)
from usb_cfsg.errors import DatasetError


def _items(n: int, seed: int = 0) -> np.ndarray:
    """Large Fashion-MNIST-like items: a zero background and a big block of ink per image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(1, 5, size=2)
        out[i, r0 : r0 + 22, c0 : c0 + 22] = rng.integers(120, 256, size=(22, 22))
    return out


def _digits(n_per: int = 6) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), n_per)
    imgs = np.zeros((len(labels), 8, 8))
    imgs[:, 2:6, 2:6] = 1.0
    return imgs, labels


def _chroma(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(np.int64)
    return rgb.max(axis=2) - rgb.min(axis=2)


def test_classes_groups_and_targets() -> None:
    names, groups = badge_classes([0, 4], [0, 1, 7])
    assert names[:4] == [
        "T-shirt/top with a zero badge",
        "T-shirt/top with a one badge",
        "Coat with a zero badge",
        "Coat with a one badge",
    ]
    assert names[4:6] == ["T-shirt/top with a seven badge", "Coat with a seven badge"]
    assert names[6:] == ["Trouser", "Pullover", "Dress", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert groups == {4: "near", 5: "near", **{c: "far" for c in range(6, 14)}}
    # item 4 (Coat) with mark 1 -> class 3; with the near mark -> 5; a far item ignores its mark
    got = badge_targets(np.array([4, 4, 0, 1, 1]), np.array([1, 2, 0, 0, 2]), [0, 4])
    assert got.tolist() == [3, 5, 0, 6, 6]


def test_the_mark_lies_on_the_item_inside_the_crop_and_its_box_holds_its_colour() -> None:
    items = _items(40)
    digits, labels = _digits()
    layout = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=3, split="train")
    seq = Badged(items, digits, layout)
    erased = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=3, split="train", erase=True)
    margin = 64 // 16
    for i in range(len(seq)):
        img = seq[i]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        x0, y0, x1, y1 = np.round(seq.boxes[i] * 64).astype(int)
        assert x1 - x0 == 10 and y1 - y0 == 10
        assert margin <= x0 and x1 <= 64 - margin and margin <= y0 and y1 <= 64 - margin
        chroma = _chroma(img)
        inside = np.zeros_like(chroma, dtype=bool)
        inside[y0:y1, x0:x1] = True
        assert chroma[inside].max() > 100, "the mark is drawn in its colour inside its box"
        assert chroma[~inside].max() == 0, "nothing else in the image has colour"
        under = render_badged(items, digits, erased, i)[..., 0][inside]  # the item without its mark
        assert (under >= 48).mean() >= 0.7, "the mark sits on the item's ink"
    # the mark's ink is MARK_RGB where the digit is full
    img = seq[0]
    x0, y0 = np.round(seq.boxes[0][:2] * 64).astype(int)
    assert tuple(img[y0 + 5, x0 + 5]) == MARK_RGB


def test_train_and_test_never_share_a_digit_instance_and_layouts_are_seeded() -> None:
    items = _items(60)
    digits, labels = _digits()
    tr = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=0, split="train")
    te = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=0, split="test")
    assert not set(tr.instance.tolist()) & set(te.instance.tolist())
    assert set(labels[tr.instance].tolist()) <= {0, 1, 2}
    assert np.array_equal(labels[tr.instance], np.array([0, 1, 2])[tr.mark])
    again = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=0, split="train")
    other = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, seed=1, split="train")
    assert np.array_equal(render_badged(items, digits, tr, 5), render_badged(items, digits, again, 5))
    assert not np.array_equal(tr.mark_x, other.mark_x)


def test_erased_marks_keep_the_layout_and_remove_every_trace_of_colour() -> None:
    items = _items(10)
    digits, labels = _digits()
    with_mark = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, split="test")
    erased = make_badge_layout(items, labels, [0, 1, 2], size=64, badge=10, split="test", erase=True)
    assert np.array_equal(with_mark.boxes, erased.boxes)
    for i in range(10):
        assert _chroma(render_badged(items, digits, erased, i)).max() == 0
        plain = render_badged(items, digits, erased, i)
        assert (plain[..., 0] == plain[..., 1]).all()


def test_bad_keys_say_what_is_wrong(tmp_path: Path) -> None:
    root = write_fmnist_replica(tmp_path / "fm")
    with pytest.raises(DatasetError, match="did you mean"):
        read_source("fmnist_badged", str(root), badge_items=["Coats"])
    with pytest.raises(DatasetError, match="three different digits"):
        read_source("fmnist_badged", str(root), badge_marks=[0, 1])
    with pytest.raises(DatasetError, match="badge_size"):
        read_source("fmnist_badged", str(root), scene_size=32, badge_size=30)


def test_the_split_carries_near_far_groups_and_mark_boxes(tmp_path: Path) -> None:
    root = write_fmnist_replica(tmp_path / "fm", num_train=200, num_test=100)
    args = make_args(
        dataset="fmnist_badged",
        data_dir=str(root),
        num_classes=4,
        num_labels=8,
        img_size=32,
        scene_size=32,
        badge_size=6,
        badge_items=["T-shirt/top", "Coat"],
        badge_marks=[0, 1, 4],
    )
    datasets, info = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, None)
    assert info.seen_class_names == [
        "T-shirt/top with a zero badge",
        "T-shirt/top with a one badge",
        "Coat with a zero badge",
        "Coat with a one badge",
    ]
    y = datasets["test_open"].targets
    groups = np.asarray(info.test_difficulty)
    assert set(groups[y < 4].tolist()) == {""}
    assert set(groups[y == 4].tolist()) == {"near", "far"}
    assert info.unseen_difficulty is not None and info.unseen_difficulty["Coat with a four badge"] == "near"
    assert info.unseen_difficulty["Trouser"] == "far"
    assert info.test_boxes is not None and info.test_boxes.shape == (len(y), 4)
    assert datasets["train_lb"].boxes is not None and len(datasets["train_lb"].boxes) == 8


def test_config_defaults_are_the_readers():
    """config.py states the dataset keys' defaults without importing the readers (``--help`` stays light);
    they must be the readers' own."""
    import dataclasses

    from usb_cfsg.config import BaseConfig
    from usb_cfsg.datasets import fmnist_badged

    defaults = {f.name: f.default for f in dataclasses.fields(BaseConfig)}
    assert defaults["badge_size"] == fmnist_badged.DEFAULT_BADGE
    assert defaults["scene_size"] == fmnist_badged.DEFAULT_SIZE
