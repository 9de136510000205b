"""make_openset_split on synthetic sources (no images needed)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from usb_cfsg.datasets import SourceData, make_openset_split
from usb_cfsg.datasets.split import OpenSetSplit
from usb_cfsg.errors import DatasetError

NAMES = [
    "Black footed Albatross",
    "Laysan Albatross",
    "Sooty Albatross",
    "Groove billed Ani",
    "Crested Auklet",
    "Least Auklet",
    "Parakeet Auklet",
    "Rhinoceros Auklet",
]


def make_source(
    per_train: int = 10, per_test: int = 3, num_classes: int = 8, shuffle_seed: int | None = None
) -> SourceData:
    """Paths like '/d/images/003/img_07.jpg'; optional shuffling of item order."""
    train = [(f"/d/images/{c:03d}/img_{i:02d}.jpg", c) for c in range(num_classes) for i in range(per_train)]
    test = [(f"/d/test/{c:03d}/img_{i:02d}.jpg", c) for c in range(num_classes) for i in range(per_test)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(train)
        random.Random(shuffle_seed + 1).shuffle(test)
    return SourceData(
        name="toy",
        class_names=NAMES[:num_classes],
        train_items=[p for p, _ in train],
        train_targets=np.array([c for _, c in train], dtype=np.int64),
        test_items=[p for p, _ in test],
        test_targets=np.array([c for _, c in test], dtype=np.int64),
    )


def paths(src: SourceData, idx: np.ndarray, train: bool = True) -> list[str]:
    items = src.train_items if train else src.test_items
    return [items[i] for i in idx]


def test_sizes_and_relabelling() -> None:
    src = make_source()
    split = make_openset_split(src, num_seen=4, num_labels=12, include_lb_to_ulb=False)
    assert split.seen_classes == [0, 1, 2, 3] and split.unseen_classes == [4, 5, 6, 7]
    assert split.num_seen == 4 and split.num_classes == 8
    lb_t = src.train_targets[split.lb_indices]
    assert np.bincount(lb_t, minlength=8).tolist() == [3, 3, 3, 3, 0, 0, 0, 0]
    assert lb_t.tolist() == sorted(lb_t.tolist())  # grouped by label
    assert set(split.lb_indices) & set(split.ulb_indices) == set()
    assert len(split.ulb_indices) == 80 - 12
    assert set(split.eval_indices.tolist()) == {i for i, t in enumerate(src.test_targets) if t < 4}
    assert sorted(split.test_indices.tolist()) == list(range(24))
    assert split.relabel(np.arange(8)).tolist() == list(range(8))
    assert split.open_label(np.arange(8)).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_include_lb_to_ulb_keeps_every_training_image() -> None:
    src = make_source()
    split = make_openset_split(src, num_seen=4, num_labels=8, include_lb_to_ulb=True)
    assert sorted(split.ulb_indices.tolist()) == list(range(80))
    assert set(split.lb_indices) <= set(split.ulb_indices)


def test_given_seen_classes_set_the_label_order() -> None:
    src = make_source()
    split = make_openset_split(src, num_seen=3, num_labels=3, seen_classes=["least_auklet", 1, "7"])
    assert split.seen_classes == [5, 1, 7] and split.unseen_classes == [0, 2, 3, 4, 6]
    assert split.relabel(np.array([5, 1, 7, 0, 2, 3, 4, 6])).tolist() == list(range(8))
    assert split.label_to_class.tolist() == [5, 1, 7, 0, 2, 3, 4, 6]
    assert src.train_targets[split.lb_indices].tolist() == [5, 1, 7]
    assert split.params["seen_classes"] == [5, 1, 7]


def test_random_class_split_depends_on_split_seed_only() -> None:
    src = make_source()
    a = make_openset_split(src, num_seen=4, num_labels=4, class_split="random", split_seed=3, seed=0)
    b = make_openset_split(src, num_seen=4, num_labels=4, class_split="random", split_seed=3, seed=9)
    c = make_openset_split(src, num_seen=4, num_labels=4, class_split="random", split_seed=4)
    assert a.seen_classes == b.seen_classes == sorted(a.seen_classes)
    assert a.seen_classes != c.seen_classes
    assert a.seen_classes != [0, 1, 2, 3]


def test_same_images_whatever_the_item_order() -> None:
    kwargs = dict(
        num_seen=5,
        num_labels=15,
        class_split="random",
        split_seed=2,
        ulb_unseen_ratio=0.2,
        include_lb_to_ulb=False,
        seed=7,
    )
    a_src, b_src = make_source(shuffle_seed=None), make_source(shuffle_seed=11)
    assert a_src.train_items != b_src.train_items
    a, b = make_openset_split(a_src, **kwargs), make_openset_split(b_src, **kwargs)
    for field, train in (("lb_indices", True), ("ulb_indices", True), ("eval_indices", False), ("test_indices", False)):
        assert paths(a_src, getattr(a, field), train) == paths(b_src, getattr(b, field), train), field
    assert a.lb_indices.tolist() != b.lb_indices.tolist()  # the indices differ, the images do not


def test_seed_changes_labeled_choice_per_class_independently() -> None:
    src = make_source()
    a = make_openset_split(src, num_seen=4, num_labels=8, seed=0)
    b = make_openset_split(src, num_seen=4, num_labels=8, seed=1)
    assert a.lb_indices.tolist() != b.lb_indices.tolist()
    # A class's labeled images do not depend on which other classes are seen.
    c = make_openset_split(src, num_seen=2, num_labels=4, seed=0)
    assert c.lb_indices.tolist() == a.lb_indices[:4].tolist()


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5])
def test_ulb_unseen_ratio_caps_unseen_images(ratio: float) -> None:
    src = make_source()
    split = make_openset_split(src, num_seen=4, num_labels=8, ulb_unseen_ratio=ratio, include_lb_to_ulb=True)
    ulb_t = src.train_targets[split.ulb_indices]
    n_seen, n_unseen = int((ulb_t < 4).sum()), int((ulb_t >= 4).sum())
    assert n_seen == 40
    assert n_unseen == int(np.floor(ratio * 40 / (1 - ratio) + 1e-9))
    assert n_unseen / (n_seen + n_unseen) <= ratio + 1e-12


def test_ulb_unseen_ratio_above_the_natural_ratio_drops_nothing() -> None:
    src = make_source()
    split = make_openset_split(src, num_seen=4, num_labels=8, ulb_unseen_ratio=0.9)
    assert len(split.ulb_indices) == 80


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_seen=4, num_labels=10), r"num_labels = 10 must be a positive multiple of num_classes = 4"),
        (dict(num_seen=4, num_labels=0), r"num_labels = 0 must be a positive multiple of num_classes = 4"),
        (
            dict(num_seen=4, num_labels=44),
            r"seen class 'Black footed Albatross' \(index 0\) has 10 training image\(s\), "
            r"fewer than the 11 labels per class",
        ),
        (dict(num_seen=9, num_labels=9), r"num_classes \(seen classes\) = 9, but toy has 8 classes"),
        (dict(num_seen=0, num_labels=9), r"num_classes \(seen classes\) = 0"),
        (
            dict(num_seen=2, num_labels=2, class_split="last"),
            r"class_split must be 'first', 'random' or 'ssb', got 'last'",
        ),
        (dict(num_seen=2, num_labels=2, ulb_unseen_ratio=1.0), r"ulb_unseen_ratio must be in \[0, 1\)"),
        (
            dict(num_seen=2, num_labels=2, seen_classes=["Laysan Albatros", 0]),
            r"unknown class 'Laysan Albatros', did you mean 'Laysan Albatross'",
        ),
        (dict(num_seen=2, num_labels=2, seen_classes=[1, "Laysan Albatross"]), r"given twice"),
        (dict(num_seen=2, num_labels=2, seen_classes=[1, 8]), r"class index 8 is out of range 0..7"),
        (dict(num_seen=2, num_labels=2, seen_classes=[1, 2, 3]), r"seen_classes lists 3 classes but num_classes"),
        (dict(num_seen=2, num_labels=2, seen_classes="1,2"), r"seen_classes must be a list"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        make_openset_split(make_source(), **kwargs)


def test_uneven_class_sizes_name_the_short_class() -> None:
    src = make_source()
    keep = [
        i for i, t in enumerate(src.train_targets) if not (t == 2 and src.train_items[i] > "/d/images/002/img_01.jpg")
    ]
    src.train_items = [src.train_items[i] for i in keep]
    src.train_targets = src.train_targets[keep]
    with pytest.raises(
        DatasetError, match=r"'Sooty Albatross' \(index 2\) has 2 training image\(s\), fewer than the 3"
    ):
        make_openset_split(src, num_seen=4, num_labels=12)


def test_in_memory_items_keep_file_order() -> None:
    images = np.zeros((40, 4, 4), dtype=np.uint8)
    src = SourceData("arr", NAMES[:4], images, np.arange(40) % 4, images[:8], np.arange(8) % 4)
    split = make_openset_split(src, num_seen=2, num_labels=4)
    assert split.ulb_indices.tolist() == list(range(40))
    assert split.test_indices.tolist() == list(range(8))


def test_json_round_trip() -> None:
    split = make_openset_split(make_source(), num_seen=3, num_labels=6, ulb_unseen_ratio=0.25, seed=4)
    data = json.loads(split.to_json())
    assert data["seen_classes"] == [0, 1, 2] and data["num_seen"] == 3
    assert data["params"] == {
        "num_seen": 3,
        "num_labels": 6,
        "class_split": "first",
        "split_seed": 0,
        "seen_classes": None,
        "ulb_unseen_ratio": 0.25,
        "include_lb_to_ulb": True,
        "seed": 4,
    }
    back = OpenSetSplit.from_json(split.to_json(indent=1))
    for field in ("lb_indices", "ulb_indices", "eval_indices", "test_indices", "class_to_label"):
        assert getattr(back, field).tolist() == getattr(split, field).tolist()
    assert back.seen_classes == split.seen_classes and back.unseen_classes == split.unseen_classes


# ------------------------------------------------------------------ the Semantic Shift Benchmark split


def _ssb_entry(dataset: str) -> dict:
    from usb_cfsg.datasets.ssb import SSB_FILE

    return json.loads(SSB_FILE.read_text(encoding="utf-8"))["datasets"][dataset]


def _expected_names_by_ssb_index(dataset: str, base) -> list[str]:
    """SSB index -> class name, read from the publisher's files the way the benchmark's code numbers them."""
    from usb_cfsg.datasets.cub200 import pretty_class_name

    if dataset == "cub200":  # class id in image_class_labels.txt minus 1 = classes.txt order
        lines = (base / "classes.txt").read_text().split("\n")
        by_id = {int(line.split()[0]): line.split(maxsplit=1)[1] for line in lines if line.strip()}
        return [pretty_class_name(by_id[i + 1]) for i in range(len(by_id))]
    if dataset == "stanford_cars":  # class id of the annotations minus 1 = cars_meta.mat order
        import scipy.io

        meta = scipy.io.loadmat(str(base / "devkit" / "cars_meta.mat"))["class_names"]
        return [str(np.asarray(n).reshape(-1)[0]).strip() for n in meta.reshape(-1)]
    # fgvc_aircraft: numpy.unique of the variant names of images_variant_trainval.txt
    lines = (base / "images_variant_trainval.txt").read_text().split("\n")
    return [str(n) for n in np.unique([line.split(" ", 1)[1] for line in lines if line.strip()])]


@pytest.mark.parametrize(
    "dataset,total,known", [("cub200", 200, 100), ("stanford_cars", 196, 98), ("fgvc_aircraft", 100, 50)]
)
def test_ssb_index_convention_on_replicas_with_every_class(tmp_path, dataset: str, total: int, known: int) -> None:
    from tests.datasets import replicas
    from usb_cfsg.datasets import read_source
    from usb_cfsg.datasets.ssb import ssb_classes

    writer = {
        "cub200": replicas.write_cub_replica,
        "stanford_cars": replicas.write_cars_replica,
        "fgvc_aircraft": replicas.write_aircraft_replica,
    }[dataset]
    base = writer(
        tmp_path / "data",
        num_classes=total,
        per_class_train=1,
        per_class_test=1,
        image_size=8,
        quirks=False,
        shuffle_seed=3,
    )
    source = read_source(dataset, str(base))
    names_by_index = _expected_names_by_ssb_index(dataset, base)
    entry = _ssb_entry(dataset)
    ssb = ssb_classes(dataset, known, source.class_names, source.train_targets)
    assert [source.class_names[c] for c in ssb.seen_classes] == [names_by_index[i] for i in entry["known_classes"]]
    for group, indices in entry["unknown_classes"].items():
        got = sorted(source.class_names[c] for c, g in ssb.difficulty.items() if g == group)
        assert got == sorted(names_by_index[i] for i in indices), group
    if dataset == "fgvc_aircraft":  # the replica's variants.txt is not sorted: the names decide, not positions
        assert source.class_names != sorted(source.class_names)
        assert ssb.seen_classes != entry["known_classes"]

    split = make_openset_split(
        source, num_seen=known, num_labels=known, class_split="ssb", seen_classes=ssb.seen_classes
    )
    assert split.seen_classes == ssb.seen_classes and split.params["class_split"] == "ssb"
    assert set(split.unseen_classes) == set(ssb.difficulty)


def test_ssb_through_build_carries_difficulty_per_test_image(tmp_path) -> None:
    from tests.datasets import replicas
    from tests.datasets.conftest import make_args
    from usb_cfsg.datasets import build_openset_datasets

    base = replicas.write_aircraft_replica(
        tmp_path / "data", num_classes=100, per_class_train=1, per_class_test=2, image_size=8, quirks=False
    )
    display = [f"plane {i}" for i in range(100)]
    args = make_args(
        dataset="fgvc_aircraft",
        data_dir=str(base),
        num_classes=50,
        num_labels=50,
        class_split="ssb",
        class_names=display,
    )
    dsets, info = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.25,) * 3, str(tmp_path / "run"))
    names_by_index = _expected_names_by_ssb_index("fgvc_aircraft", base)
    variants = (base / "variants.txt").read_text().split("\n")
    entry = _ssb_entry("fgvc_aircraft")
    # display names replace the variant names after the benchmark's classes were resolved on the variant names
    assert info.seen_class_names == [display[variants.index(names_by_index[i])] for i in entry["known_classes"]]
    y = np.asarray(dsets["test_open"].targets)
    assert len(info.test_difficulty) == len(y) == 200
    assert all((d == "") == (t < 50) for d, t in zip(info.test_difficulty, y))
    counts = {g: info.test_difficulty.count(g) for g in ("Easy", "Medium", "Hard")}
    assert counts == {g: 2 * len(entry["unknown_classes"][g]) for g in counts}
    hard = names_by_index[entry["unknown_classes"]["Hard"][0]]
    assert info.unseen_difficulty[display[variants.index(hard)]] == "Hard"
    assert len(dsets["train_ulb_eval"]) == len(dsets["train_ulb"])
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["config"]["class_split"] == "ssb" and len(record["ssb_difficulty"]) == 50


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_classes": 40, "num_labels": 40}, "fixes 50 known classes, but num_classes = 40; set num_classes: 50"),
        ({"dataset": "flowers102"}, "ssb exists for"),
        ({"seen_classes": [0, 1]}, "seen_classes is given too"),
    ],
)
def test_ssb_errors_name_the_fix(overrides: dict, message: str) -> None:
    from tests.datasets.conftest import make_args
    from usb_cfsg.datasets import build_openset_datasets

    values = dict(dataset="fgvc_aircraft", data_dir="/nonexistent", num_classes=50, num_labels=50, class_split="ssb")
    args = make_args(**{**values, **overrides})
    with pytest.raises(DatasetError, match=message):  # before any data is read
        build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.25,) * 3, None)
    with pytest.raises(DatasetError, match="needs the benchmark's known classes"):
        make_openset_split(make_source(), num_seen=2, num_labels=2, class_split="ssb")


def test_ssb_file_keeps_its_provenance() -> None:
    from usb_cfsg.datasets.ssb import SSB_FILE, load_ssb_file

    data = load_ssb_file()
    assert "sgvaze/osr_closed_set_all_you_need" in data["source"] and "index_convention" in data
    assert SSB_FILE.parent.name == "datasets" and set(data["datasets"]) == {"cub200", "fgvc_aircraft", "stanford_cars"}


def test_calibration_set_is_a_capped_even_sample_of_the_unlabeled_images(tmp_path, monkeypatch) -> None:
    from tests.datasets import replicas
    from tests.datasets.conftest import make_args
    from usb_cfsg.datasets import build

    base = replicas.write_cub_replica(tmp_path / "data")
    args = make_args(data_dir=str(base.parent), num_classes=3, num_labels=6)
    monkeypatch.setattr(build, "CALIBRATION_MAX_IMAGES", 5)
    dsets, _ = build.build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.25,) * 3, None)
    ulb, cal = list(dsets["train_ulb"].data), list(dsets["train_ulb_eval"].data)
    assert len(ulb) == 24 and cal == [ulb[i] for i in (0, 6, 12, 17, 23)]
    assert dsets["train_ulb_eval"][0]["x_lb"].shape == dsets["test_open"][0]["x_lb"].shape  # evaluation transform
