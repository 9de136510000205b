"""Readers of the file-based datasets, on miniature replicas of each publisher's layout."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import usb_cfsg.datasets  # noqa: F401  (registers every reader)
from tests.datasets import replicas
from usb_cfsg.datasets import DATASETS, read_source
from usb_cfsg.datasets.cub200 import pretty_class_name
from usb_cfsg.datasets.stanford_dogs import breed_name
from usb_cfsg.errors import DatasetError


def _cars_tv(root: Path, **kw: Any) -> Path:
    return replicas.write_cars_replica(root, layout="torchvision", **kw)


def _dogs_flat(root: Path, **kw: Any) -> Path:
    return replicas.write_dogs_replica(root, lists_in_subfolder=False, **kw)


# name -> (dataset, writer, class names, train count, test count, annotation files relative to the folder)
CASES: dict[str, tuple[str, Callable[..., Path], list[str], int, int, list[str]]] = {
    "cub200": (
        "cub200",
        replicas.write_cub_replica,
        [
            "Black footed Albatross",
            "Laysan Albatross",
            "Sooty Albatross",
            "Groove billed Ani",
            "Crested Auklet",
            "Least Auklet",
        ],
        24,
        12,
        ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"],
    ),
    "cars_devkit": (
        "stanford_cars",
        replicas.write_cars_replica,
        replicas.CAR_NAMES[:5],
        15,
        10,
        ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"],
    ),
    "cars_torchvision": (
        "stanford_cars",
        _cars_tv,
        replicas.CAR_NAMES[:5],
        15,
        10,
        ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"],
    ),
    "aircraft": (
        "fgvc_aircraft",
        replicas.write_aircraft_replica,
        replicas.AIRCRAFT_NAMES[:5],
        15,
        10,
        ["variants.txt", "images_variant_trainval.txt", "images_variant_test.txt"],
    ),
    "flowers": (
        "flowers102",
        replicas.write_flowers_replica,
        ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"],
        16,
        8,
        ["imagelabels.mat", "setid.mat"],
    ),
    "dogs": (
        "stanford_dogs",
        replicas.write_dogs_replica,
        ["Chihuahua", "Japanese spaniel", "Maltese dog", "Pekinese"],
        12,
        8,
        ["lists/train_list.mat", "lists/test_list.mat"],
    ),
    "dogs_flat_lists": (
        "stanford_dogs",
        _dogs_flat,
        ["Chihuahua", "Japanese spaniel", "Maltese dog", "Pekinese"],
        12,
        8,
        ["train_list.mat", "test_list.mat"],
    ),
    "image_folder": (
        "image_folder",
        replicas.write_image_folder_replica,
        ["apple", "banana", "cherry", "date"],
        12,
        8,
        [],
    ),
}


def test_every_reader_is_registered() -> None:
    expected = {
        "cub200",
        "stanford_cars",
        "fgvc_aircraft",
        "flowers102",
        "stanford_dogs",
        "image_folder",
        "fmnist_openset",
    }
    assert expected <= set(DATASETS.names())


@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_replica(tmp_path: Path, case: str) -> None:
    name, writer, names, n_train, n_test, _ = CASES[case]
    folder = writer(tmp_path / "data")
    src = read_source(name, str(tmp_path / "data"))
    assert src.name == name
    assert src.class_names == names
    assert len(src.train_items) == n_train and len(src.test_items) == n_test
    assert src.train_targets.dtype == np.int64 and src.test_targets.dtype == np.int64
    per_class_train = n_train // len(names)
    assert np.bincount(src.train_targets, minlength=len(names)).tolist() == [per_class_train] * len(names)
    assert set(src.test_targets.tolist()) == set(range(len(names)))
    assert all(Path(p).is_file() and str(p).startswith(str(folder)) for p in src.train_items + src.test_items)
    assert all("{}" in t for t in src.prompt_templates)
    # The dataset folder itself is accepted as well as its parent.
    again = read_source(name, str(folder))
    assert again.train_items == src.train_items


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][5]))
def test_missing_annotation_file_shows_layout(tmp_path: Path, case: str) -> None:
    name, writer, *_, files = CASES[case]
    for rel in files:
        folder = writer(tmp_path / rel.replace("/", "_"))
        (folder / rel).unlink()
        with pytest.raises(DatasetError) as info:
            read_source(name, str(folder.parent if name != "stanford_cars" else folder))
        message = str(info.value)
        assert Path(rel).name in message, message
        assert "Expected layout" in message and "|--" in message


@pytest.mark.parametrize(
    "name", ["cub200", "stanford_cars", "fgvc_aircraft", "flowers102", "stanford_dogs", "image_folder"]
)
def test_missing_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="no data_dir"):
        read_source(name, None)
    with pytest.raises(DatasetError, match="Expected layout") as info:
        read_source(name, str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(info.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_image_is_an_error_or_a_counted_skip(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, writer, *_ = CASES[case]
    writer(tmp_path)
    full = read_source(name, str(tmp_path))
    victim = Path(full.train_items[3])
    victim.unlink()
    if name == "image_folder":  # a folder reader cannot know about a deleted file
        assert len(read_source(name, str(tmp_path)).train_items) == len(full.train_items) - 1
        return
    with pytest.raises(DatasetError) as info:
        read_source(name, str(tmp_path))
    assert str(victim) in str(info.value) and "skip_bad_images" in str(info.value)
    with caplog.at_level(logging.WARNING):
        kept = read_source(name, str(tmp_path), skip_bad_images=True)
    assert len(kept.train_items) == len(full.train_items) - 1
    assert str(victim) not in kept.train_items
    assert "skipped 1 missing and 0 unreadable train image(s)" in caplog.text


def test_skip_bad_images_drops_corrupt_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    replicas.write_cub_replica(tmp_path)
    full = read_source("cub200", str(tmp_path))
    replicas.write_image(Path(full.test_items[0]), np.zeros((4, 4, 3), np.uint8), "corrupt")
    replicas.write_image(Path(full.test_items[1]), replicas.class_pixels(0, 6, 0), "truncated")
    # Without skipping, existence is all the reader checks: decoding fails later, naming the file.
    assert len(read_source("cub200", str(tmp_path)).test_items) == len(full.test_items)
    with caplog.at_level(logging.WARNING):
        kept = read_source("cub200", str(tmp_path), skip_bad_images=True)
    assert kept.test_items == full.test_items[2:]
    assert kept.test_targets.tolist() == full.test_targets[2:].tolist()
    assert "skipped 0 missing and 2 unreadable test image(s)" in caplog.text
    assert full.test_items[0] in caplog.text


def test_class_names_replace_display_names(tmp_path: Path) -> None:
    replicas.write_cub_replica(tmp_path)
    names = [f"bird {i}" for i in range(6)]
    assert read_source("cub200", str(tmp_path), class_names=names).class_names == names
    with pytest.raises(DatasetError, match="class_names has 2 names but the dataset has 6 classes"):
        read_source("cub200", str(tmp_path), class_names=["a", "b"])


def test_cub_names_and_malformed_lines(tmp_path: Path) -> None:
    assert pretty_class_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert pretty_class_name("200.Common_Yellowthroat") == "Common Yellowthroat"
    folder = replicas.write_cub_replica(tmp_path)
    labels = folder / "image_class_labels.txt"
    labels.write_text(labels.read_text() + "oops\n")
    with pytest.raises(DatasetError, match=r"image_class_labels.txt line 37: cannot parse 'oops'"):
        read_source("cub200", str(tmp_path))
    labels.write_text("1 1\n")
    with pytest.raises(DatasetError, match="is missing from .*image_class_labels.txt"):
        read_source("cub200", str(tmp_path))


def test_cub_order_follows_the_annotation_files(tmp_path: Path) -> None:
    a = read_source("cub200", str(replicas.write_cub_replica(tmp_path / "a")))
    b = read_source("cub200", str(replicas.write_cub_replica(tmp_path / "b", shuffle_seed=3)))
    rel = lambda src, root: [str(Path(p).relative_to(root)) for p in src.train_items]  # noqa: E731
    ra, rb = rel(a, tmp_path / "a"), rel(b, tmp_path / "b")
    assert ra != rb and sorted(ra) == sorted(rb)
    assert dict(zip(ra, a.train_targets.tolist())) == dict(zip(rb, b.train_targets.tolist()))


def test_cars_test_annotations_in_devkit_and_unlabeled_file(tmp_path: Path) -> None:
    import scipy.io

    folder = replicas.write_cars_replica(tmp_path)
    shutil.move(folder / "cars_test_annos_withlabels.mat", folder / "devkit" / "cars_test_annos_withlabels.mat")
    assert len(read_source("stanford_cars", str(folder)).test_items) == 10
    # The publisher's unlabeled test file has no 'class' field.
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname")]
    arr = np.zeros((1, 1), dtype=dtype)
    arr[0, 0] = (1, 1, 5, 5, np.array(["00001.jpg"]))
    scipy.io.savemat(str(folder / "devkit" / "cars_test_annos_withlabels.mat"), {"annotations": arr})
    with pytest.raises(DatasetError, match="no field 'class'.*cars_test_annos_withlabels.mat"):
        read_source("stanford_cars", str(folder))


def test_cars_nested_image_folders(tmp_path: Path) -> None:
    folder = replicas.write_cars_replica(tmp_path / "kaggle")
    for split in ("cars_train", "cars_test"):
        inner = folder / f"{split}_tmp"
        shutil.move(folder / split, inner)
        (folder / split).mkdir()
        shutil.move(inner, folder / split / split)
    src = read_source("stanford_cars", str(folder))
    assert all("/cars_train/cars_train/" in p for p in src.train_items)


def test_aircraft_unknown_variant(tmp_path: Path) -> None:
    folder = replicas.write_aircraft_replica(tmp_path)
    test_list = folder / "images_variant_test.txt"
    test_list.write_text(test_list.read_text() + "1999999 Cesna 172\n")
    with pytest.raises(DatasetError, match=r"variant 'Cesna 172' is not in variants.txt, did you mean 'Cessna 172'"):
        read_source("fgvc_aircraft", str(tmp_path))


def test_flowers_names_match_the_standard_list() -> None:
    from torchvision.datasets import Flowers102

    from usb_cfsg.datasets.flowers102 import FLOWER_NAMES

    assert len(FLOWER_NAMES) == 102 and len(set(FLOWER_NAMES)) == 102
    # The widely copied list spells class 60 "pink-yellow dahlia?"; ours drops the stray "?".
    reference = [n.rstrip("?") for n in Flowers102.classes]
    assert FLOWER_NAMES == reference


def test_flowers_train_is_trn_plus_val(tmp_path: Path) -> None:
    import scipy.io

    folder = replicas.write_flowers_replica(tmp_path)
    src = read_source("flowers102", str(tmp_path))
    sets = scipy.io.loadmat(str(folder / "setid.mat"), squeeze_me=True)
    expected = [f"image_{n:05d}.jpg" for n in list(sets["trnid"]) + list(sets["valid"])]
    assert [Path(p).name for p in src.train_items] == expected


def test_dogs_breed_names() -> None:
    assert breed_name("n02085620-Chihuahua") == "Chihuahua"
    assert breed_name("n02086240-Shih-Tzu") == "Shih-Tzu"
    assert breed_name("n02085782-Japanese_spaniel") == "Japanese spaniel"


def test_image_folder_class_names_choose_and_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = replicas.write_image_folder_replica(tmp_path, class_names=["b_class", "a_class", "c_class"])
    assert read_source("image_folder", str(root)).class_names == ["a class", "b class", "c class"]
    with caplog.at_level(logging.WARNING):
        chosen = read_source("image_folder", str(root), class_names=["c_class", "a_class"])
    assert chosen.class_names == ["c class", "a class"]
    assert "ignoring 1 class folder(s) not in class_names: b_class" in caplog.text
    assert all("/c_class/" in p for p, t in zip(chosen.train_items, chosen.train_targets) if t == 0)
    with pytest.raises(DatasetError) as info:
        read_source("image_folder", str(root), class_names=["c_clas"])
    message = str(info.value)
    assert "'c_clas'" in message and "did you mean 'c_class'" in message and "a_class, b_class, c_class" in message


def test_image_folder_ignores_stray_files_and_sorts_paths(folder_dir: Path) -> None:
    src = read_source("image_folder", str(folder_dir))
    suffixes = {Path(p).suffix for p in src.train_items + src.test_items}
    assert suffixes == {".jpg", ".png", ".bmp", ".webp"}
    assert not any(p.endswith((".txt", ".DS_Store")) for p in src.train_items)
    for t in range(4):
        paths = [p for p, y in zip(src.train_items, src.train_targets) if y == t]
        assert paths == sorted(paths)


def test_image_folder_needs_both_splits(tmp_path: Path) -> None:
    root = replicas.write_image_folder_replica(tmp_path)
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError, match=r"missing .*test\nExpected layout"):
        read_source("image_folder", str(root))


# --- download=True ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, url_part, where",
    [
        ("cub200", "CUB_200_2011.tgz", "CUB_200_2011"),
        ("fgvc_aircraft", "fgvc-aircraft-2013b.tar.gz", "fgvc-aircraft-2013b"),
        ("flowers102", "102flowers.tgz", "flowers-102"),
        ("stanford_dogs", "images.tar", "stanford_dogs"),
    ],
)
def test_download_offline_says_where_to_get_it(
    tmp_path: Path, offline: list[str], name: str, url_part: str, where: str
) -> None:
    with pytest.raises(DatasetError) as info:
        read_source(name, str(tmp_path), download=True)
    message = str(info.value)
    assert offline and url_part in offline[0]
    assert "download of http" in message and "failed" in message and "Temporary failure" in message
    assert "by hand from http" in message and str(tmp_path / where) in message and "|--" in message


def test_download_not_attempted_when_present(tmp_path: Path, offline: list[str]) -> None:
    replicas.write_cub_replica(tmp_path)
    assert len(read_source("cub200", str(tmp_path), download=True).train_items) == 24
    assert offline == []


def test_download_unpacks_into_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import utils as tv_utils

    calls: list[dict] = []

    def fake_download(url: str, download_root: str, **kwargs: Any) -> None:
        calls.append(dict(url=url, root=download_root, **kwargs))
        replicas.write_cub_replica(download_root)  # what unpacking the real archive produces

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    src = read_source("cub200", str(tmp_path / "new"), download=True)
    assert len(src.train_items) == 24
    assert calls[0]["root"] == str(tmp_path / "new")
    assert calls[0]["md5"] == "97eceeb196236b17998738112f37df78"
    assert calls[0]["filename"] == "CUB_200_2011.tgz"


def test_cars_cannot_be_downloaded(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(DatasetError, match="no public download") as info:
        read_source("stanford_cars", str(tmp_path), download=True)
    assert "mirror" in str(info.value) and offline == []
