"""The Fashion-MNIST reader: IDX files, the Debian fallback, and the real Debian data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.datasets.conftest import needs_debian
from tests.datasets.replicas import write_fmnist_replica
from usb_cfsg.datasets import build_openset_datasets, fmnist, make_openset_split, read_source
from usb_cfsg.errors import ConfigError, DatasetError

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files(tmp_path: Path, no_debian: Path, gz: bool) -> None:
    write_fmnist_replica(tmp_path, num_train=30, num_test=10, gz=gz)
    src = read_source("fmnist_openset", str(tmp_path))
    assert src.class_names == NAMES
    assert isinstance(src.train_items, np.ndarray)
    assert src.train_items.shape == (30, 28, 28) and src.train_items.dtype == np.uint8
    assert src.test_items.shape == (10, 28, 28)
    assert src.train_targets.tolist() == [i % 10 for i in range(30)]
    assert src.train_targets.dtype == np.int64


@pytest.mark.parametrize("sub", ["fashion-mnist", "FashionMNIST/raw"])
def test_standard_sub_folders(tmp_path: Path, no_debian: Path, sub: str) -> None:
    write_fmnist_replica(tmp_path / sub, num_train=10, num_test=10)
    assert len(read_source("fmnist_openset", str(tmp_path)).train_items) == 10


def test_falls_back_to_the_debian_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_debian = write_fmnist_replica(tmp_path / "debian", num_train=20, num_test=10)
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", str(fake_debian))
    assert len(read_source("fmnist_openset", None).train_items) == 20
    (tmp_path / "empty").mkdir()
    assert len(read_source("fmnist_openset", str(tmp_path / "empty")).train_items) == 20


def test_missing_files_name_the_debian_package(tmp_path: Path, no_debian: Path) -> None:
    with pytest.raises(DatasetError) as info:
        read_source("fmnist_openset", str(tmp_path))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    for stem in fmnist.FILES.values():
        assert stem in message
    assert str(tmp_path) in message and str(no_debian) in message


def test_malformed_idx_file(tmp_path: Path, no_debian: Path) -> None:
    write_fmnist_replica(tmp_path, num_train=10, num_test=10)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-3]))
    with pytest.raises(DatasetError, match="truncated or padded") as info:
        read_source("fmnist_openset", str(tmp_path))
    assert str(labels) in str(info.value)
    labels.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))
    with pytest.raises(DatasetError, match="not an IDX file of unsigned bytes"):
        read_source("fmnist_openset", str(tmp_path))


def test_download_offline(tmp_path: Path, no_debian: Path, offline: list[str]) -> None:
    with pytest.raises(DatasetError) as info:
        read_source("fmnist_openset", str(tmp_path), download=True)
    message = str(info.value)
    assert offline and offline[0].endswith("train-images-idx3-ubyte.gz")
    assert "apt-get install dataset-fashion-mnist" in message and str(tmp_path / "fashion-mnist") in message


@needs_debian
def test_real_debian_fashion_mnist() -> None:
    src = read_source("fmnist_openset", None)
    assert src.class_names == NAMES
    assert src.train_items.shape == (60000, 28, 28) and src.test_items.shape == (10000, 28, 28)
    assert np.bincount(src.train_targets).tolist() == [6000] * 10
    assert np.bincount(src.test_targets).tolist() == [1000] * 10
    split = make_openset_split(src, num_seen=6, num_labels=60, ulb_unseen_ratio=0.3, seed=1)
    assert len(split.lb_indices) == 60 and len(split.eval_indices) == 6000 and len(split.test_indices) == 10000
    unseen_frac = float((split.relabel(src.train_targets[split.ulb_indices]) >= 6).mean())
    assert 0.29 < unseen_frac <= 0.3


def _card(path: Path, pool: np.ndarray, num_train: int) -> Path:
    """A demo CLIP card holding only what the data side reads (the builder is tested in tests/test_demo_clip.py)."""
    path.write_text(
        json.dumps({"dataset": "fmnist_openset", "pool": {"num_train": num_train, "indices": [int(i) for i in pool]}})
    )
    return path


def test_pretrain_pool_never_enters_the_split(tmp_path: Path, no_debian: Path, args_factory) -> None:
    """With pretrain_pool, labeled and unlabeled images are exactly the training images outside the pool."""
    from usb_cfsg_tools.demo_clip import select_pool

    write_fmnist_replica(tmp_path / "data", num_train=200, num_test=20)
    src = read_source("fmnist_openset", str(tmp_path / "data"))
    where = {img.tobytes(): i for i, img in enumerate(src.train_items)}
    assert len(where) == 200  # every replica image is distinct, so items map back to their index
    pool = select_pool(src.train_targets, 0.5, seed=0)
    card = _card(tmp_path / "card.json", pool, 200)
    args = args_factory(
        dataset="fmnist_openset",
        data_dir=str(tmp_path / "data"),
        num_classes=6,
        num_labels=12,
        img_size=28,
        pretrain_pool=str(card),
    )
    datasets, info = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, None)
    lb = {where[np.asarray(img).tobytes()] for img in datasets["train_lb"].data}
    ulb = {where[np.asarray(img).tobytes()] for img in datasets["train_ulb"].data}
    assert len(lb) == 12
    assert lb.isdisjoint(pool.tolist()) and ulb.isdisjoint(pool.tolist())
    assert lb | ulb == set(range(200)) - set(pool.tolist())  # the rest of the training set, all of it
    assert len(datasets["test_open"]) == 20  # the test set is untouched
    without, _ = build_openset_datasets(
        args_factory(
            dataset="fmnist_openset", data_dir=str(tmp_path / "data"), num_classes=6, num_labels=12, img_size=28
        ),
        "fixmatch",
        (0.5,) * 3,
        (0.5,) * 3,
        None,
    )
    assert len(without["train_ulb"]) == 200


def test_pretrain_pool_of_another_training_set_is_refused(tmp_path: Path, no_debian: Path, args_factory) -> None:
    write_fmnist_replica(tmp_path / "data", num_train=40, num_test=10)
    card = _card(tmp_path / "card.json", np.arange(0, 60, 2), 60)
    args = args_factory(
        dataset="fmnist_openset",
        data_dir=str(tmp_path / "data"),
        num_classes=6,
        num_labels=12,
        img_size=28,
        pretrain_pool=str(card),
    )
    with pytest.raises(DatasetError, match="indexes 60 training images, this fmnist_openset has 40"):
        build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, None)
    args.pretrain_pool = str(tmp_path / "missing" / "card.json")
    with pytest.raises(ConfigError, match="does not exist; build one with: python -m usb_cfsg_tools.demo_clip"):
        build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, None)


@needs_debian
def test_real_fashion_mnist_split_is_disjoint_from_the_demo_pool(tmp_path: Path) -> None:
    """On the real data with the demo's split settings: no pretraining image is labeled or unlabeled."""
    from usb_cfsg_tools.demo_clip import select_pool, without_pretrain_pool

    src = read_source("fmnist_openset", None)
    pool = select_pool(src.train_targets, 0.5, seed=0)
    card = _card(tmp_path / "card.json", pool, 60000)
    rest = without_pretrain_pool(src, str(card))
    keep = np.setdiff1d(np.arange(60000), pool)
    assert len(rest.train_items) == 30000 and np.bincount(rest.train_targets).tolist() == [3000] * 10
    split = make_openset_split(rest, num_seen=6, num_labels=60, seed=0)
    original = keep[np.concatenate([split.lb_indices, split.ulb_indices])]
    assert np.intersect1d(original, pool).size == 0
    assert np.array_equal(rest.train_items[split.lb_indices], src.train_items[keep[split.lb_indices]])
