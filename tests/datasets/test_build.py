"""build_openset_datasets: USB datasets, items, split.json and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.datasets import replicas
from usb_cfsg.datasets import OpenSetInfo, build_openset_datasets
from usb_cfsg.datasets.torch_dataset import OpenSetDataset
from usb_cfsg.errors import DatasetError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_datasets_and_items(cub_dir: Path, args_factory: Callable, tmp_path: Path) -> None:
    args = args_factory(data_dir=str(cub_dir), num_classes=3, num_labels=6)
    dsets, info = build_openset_datasets(args, "fixmatch", MEAN, STD, str(tmp_path / "run"))
    assert set(dsets) == {"train_lb", "train_ulb", "eval", "test", "test_open", "train_ulb_eval", "train_lb_eval"}
    assert dsets["test"] is None
    # the labeled images again, with the evaluation transform (threshold_rule labeled_tpr)
    assert list(dsets["train_lb_eval"].data) == list(dsets["train_lb"].data)
    assert dsets["train_lb_eval"].targets.tolist() == dsets["train_lb"].targets.tolist()
    assert dsets["train_lb_eval"].transform is dsets["eval"].transform
    assert [len(dsets[k]) for k in ("train_lb", "train_ulb", "eval", "test_open")] == [6, 24, 6, 12]
    assert all(isinstance(dsets[k], OpenSetDataset) for k in ("train_lb", "train_ulb", "eval", "test_open"))

    assert isinstance(info, OpenSetInfo) and info.dataset == "cub200" and info.num_seen == 3
    assert info.seen_class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert info.unseen_class_names == ["Groove billed Ani", "Crested Auklet", "Least Auklet"]
    assert info.prompt_templates[0] == "a photo of a {}, a type of bird."

    lb = dsets["train_lb"][0]
    assert set(lb) == {"idx_lb", "x_lb", "y_lb"}
    assert lb["x_lb"].shape == (3, 16, 16) and lb["x_lb"].dtype == torch.float32
    assert isinstance(lb["y_lb"], int) and 0 <= lb["y_lb"] < 3
    ulb = dsets["train_ulb"][0]
    assert set(ulb) == {"idx_ulb", "x_ulb_w", "x_ulb_s", "y_ulb"}
    assert ulb["x_ulb_w"].shape == ulb["x_ulb_s"].shape == (3, 16, 16)
    y_ulb = [dsets["train_ulb"][i]["y_ulb"] for i in range(len(dsets["train_ulb"]))]
    assert sorted(set(y_ulb)) == [0, 1, 2, 3, 4, 5]  # >= K marks unseen classes
    ev = dsets["eval"]
    assert set(ev[0]) == {"idx_lb", "x_lb", "y_lb"} and set(ev.targets.tolist()) == {0, 1, 2}
    assert dsets["test_open"].targets.tolist().count(3) == 6 and set(dsets["test_open"].targets.tolist()) == {
        0,
        1,
        2,
        3,
    }
    assert dsets["test_open"].num_classes == 4

    batch = next(iter(DataLoader(dsets["train_ulb"], batch_size=5, shuffle=False, num_workers=0)))
    assert batch["x_ulb_w"].shape == (5, 3, 16, 16) and batch["y_ulb"].dtype == torch.int64
    assert batch["idx_ulb"].tolist() == [0, 1, 2, 3, 4]


def test_quirky_images_through_the_pipeline(folder_dir: Path, args_factory: Callable) -> None:
    args = args_factory(dataset="image_folder", data_dir=str(folder_dir), num_classes=2, num_labels=4)
    dsets, info = build_openset_datasets(args, "fixmatch", MEAN, STD, None)
    for i in range(len(dsets["train_ulb"])):  # every mode and format of the replica
        item = dsets["train_ulb"][i]
        assert item["x_ulb_w"].shape == (3, 16, 16) and torch.isfinite(item["x_ulb_s"]).all()
    for i in range(len(dsets["test_open"])):
        assert dsets["test_open"][i]["x_lb"].shape == (3, 16, 16)


def test_split_json(cub_dir: Path, args_factory: Callable, tmp_path: Path) -> None:
    args = args_factory(
        data_dir=str(cub_dir),
        num_classes=2,
        num_labels=4,
        class_split="random",
        split_seed=5,
        ulb_unseen_ratio=0.5,
        include_lb_to_ulb=False,
        seed=3,
    )
    _, info = build_openset_datasets(args, "fixmatch", MEAN, STD, str(tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["dataset"] == "cub200" and record["data_dir"] == str(cub_dir)
    assert record["num_train"] == 24 and record["num_test"] == 12
    assert len(record["class_names"]) == 6
    assert record["seen_class_names"] == info.seen_class_names and len(record["unseen_class_names"]) == 4
    assert record["split"]["seen_classes"] == info.split.seen_classes
    assert record["split"]["lb_indices"] == info.split.lb_indices.tolist()
    # 2 seen classes x 4 train - 4 labeled = 4 seen unlabeled; ratio 0.5 keeps 4 unseen of 16.
    assert record["sizes"] == {"train_lb": 4, "train_ulb": (8 - 4) + 4, "eval": 4, "test_open": 12}
    config = record["config"]
    assert config["class_split"] == "random" and config["split_seed"] == 5 and config["seed"] == 3
    assert config["ulb_unseen_ratio"] == 0.5 and config["include_lb_to_ulb"] is False
    assert config["num_classes"] == 2 and config["num_labels"] == 4 and config["img_size"] == 16
    assert all(f.startswith("CUB_200_2011/images/") for f in record["lb_files"])


def test_no_run_dir_writes_nothing_and_args_untouched(cub_dir: Path, args_factory: Callable, tmp_path: Path) -> None:
    args = args_factory(data_dir=str(cub_dir))
    before = dict(vars(args))
    build_openset_datasets(args, "fixmatch", MEAN, STD, None)
    assert vars(args) == before
    assert not list(tmp_path.rglob("split.json"))


def test_reproducible_across_shuffled_replicas(tmp_path: Path, args_factory: Callable) -> None:
    picked = []
    for name, shuffle in (("a", None), ("b", 5)):
        replicas.write_cub_replica(tmp_path / name, shuffle_seed=shuffle)
        args = args_factory(
            data_dir=str(tmp_path / name),
            num_classes=4,
            num_labels=8,
            class_split="random",
            ulb_unseen_ratio=0.2,
            seed=2,
        )
        dsets, info = build_openset_datasets(args, "fixmatch", MEAN, STD, str(tmp_path / f"run_{name}"))
        rel = {
            k: [(str(Path(p).relative_to(tmp_path / name)), int(t)) for p, t in zip(dsets[k].data, dsets[k].targets)]
            for k in ("train_lb", "train_ulb", "eval", "test_open")
        }
        picked.append((rel, info.seen_class_names))
        record = json.loads((tmp_path / f"run_{name}" / "split.json").read_text())
        picked[-1] += (record["lb_files"],)
    (rel_a, seen_a, files_a), (rel_b, seen_b, files_b) = picked
    assert seen_a == seen_b and files_a == files_b
    for key in rel_a:
        assert rel_a[key] == rel_b[key], key


def test_corrupt_image_error_names_the_file(cub_dir: Path, args_factory: Callable) -> None:
    dsets, _ = build_openset_datasets(args_factory(data_dir=str(cub_dir)), "fixmatch", MEAN, STD, None)
    victim = str(dsets["train_ulb"].data[2])
    replicas.write_image(Path(victim), np.zeros((2, 2, 3), np.uint8), "corrupt")
    with pytest.raises(DatasetError) as info:
        dsets["train_ulb"][2]
    assert victim in str(info.value)


def test_optional_keys_may_be_absent_or_strings(cub_dir: Path, args_factory: Callable) -> None:
    args = args_factory(
        data_dir=str(cub_dir),
        seen_classes="Least Auklet, 0, Sooty Albatross",
        ulb_unseen_ratio="none",
        class_names=None,
    )
    _, info = build_openset_datasets(args, "fixmatch", MEAN, STD, None)
    assert info.seen_class_names == ["Least Auklet", "Black footed Albatross", "Sooty Albatross"]
    assert info.class_names[:3] == info.seen_class_names


def test_fmnist_arrays_become_rgb_tensors(tmp_path: Path, args_factory: Callable) -> None:
    replicas.write_fmnist_replica(tmp_path, num_train=40, num_test=20)
    args = args_factory(
        dataset="fmnist_openset", data_dir=str(tmp_path), num_classes=6, num_labels=12, img_size=28, crop_ratio=1.0
    )
    dsets, info = build_openset_datasets(args, "fixmatch", MEAN, STD, None)
    assert info.seen_class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal"]
    item = dsets["train_ulb"][0]
    assert item["x_ulb_w"].shape == (3, 28, 28) and item["x_ulb_s"].shape == (3, 28, 28)
    assert dsets["eval"][0]["x_lb"].shape == (3, 28, 28)


@pytest.mark.parametrize(
    "alg, keys",
    [
        ("fullysupervised", {"idx_ulb", "y_ulb"}),
        ("comatch", {"idx_ulb", "x_ulb_w", "x_ulb_s_0", "x_ulb_s_1", "y_ulb"}),
    ],
)
def test_unlabeled_views_follow_the_algorithm(cub_dir: Path, args_factory: Callable, alg: str, keys: set) -> None:
    dsets, _ = build_openset_datasets(args_factory(data_dir=str(cub_dir)), alg, MEAN, STD, None)
    assert set(dsets["train_ulb"][0]) == keys


def test_unknown_dataset_lists_known_ones(args_factory: Callable) -> None:
    from usb_cfsg.errors import RegistryError

    with pytest.raises(RegistryError, match="unknown dataset 'cub2000', did you mean 'cub200'"):
        build_openset_datasets(args_factory(dataset="cub2000"), "fixmatch", MEAN, STD, None)


# ------------------------------------------------------------------ eval_subset


def test_stratified_subset_is_exact_proportional_and_seeded() -> None:
    from usb_cfsg.datasets.build import stratified_subset

    labels = np.repeat(np.arange(10), [1000] * 6 + [500, 700, 900, 300])
    sub = stratified_subset(labels, 1000, seed=0)
    assert len(sub) == 1000 and np.all(np.diff(sub) > 0) and sub.dtype == np.int64
    counts = np.bincount(labels[sub], minlength=10)
    expected = np.bincount(labels, minlength=10) * 1000 / len(labels)
    assert np.all(np.abs(counts - expected) < 1)  # every class keeps its share (largest remainder)
    assert np.array_equal(sub, stratified_subset(labels, 1000, seed=0))
    assert not np.array_equal(sub, stratified_subset(labels, 1000, seed=1))
    assert np.array_equal(stratified_subset(labels, 10**6, seed=0), np.arange(len(labels)))
    tiny = stratified_subset(np.repeat(np.arange(5), [100, 1, 1, 1, 1]), 6, seed=0)
    assert len(tiny) == 6 and set(np.repeat(np.arange(5), [100, 1, 1, 1, 1])[tiny]) == {0, 1, 2, 3, 4}


def test_eval_subset_of_the_open_set_test_and_its_seen_part(
    cub_dir: Path, args_factory: Callable, tmp_path: Path
) -> None:
    args = args_factory(data_dir=str(cub_dir), num_classes=3, num_labels=6, eval_subset=6)
    dsets, info = build_openset_datasets(args, "fixmatch", MEAN, STD, str(tmp_path / "run"))
    assert len(dsets["test_open"]) == 12 and len(dsets["eval"]) == 6  # the datasets stay whole
    assert info.test_subset is not None and info.eval_subset is not None and len(info.test_subset) == 6
    # one image of each of the 6 test classes (2 each): stratified over the original classes
    picked = [info.split.test_indices[i] for i in info.test_subset]
    assert len(set(dsets["test_open"].targets[info.test_subset].tolist())) == 4  # 3 seen + "unknown"
    seen_picked = {int(t) for t in picked} & set(info.split.eval_indices.tolist())
    assert {int(info.split.eval_indices[i]) for i in info.eval_subset} == seen_picked and len(seen_picked) == 3
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["eval_subset"] == {"test_open": info.test_subset.tolist(), "eval": info.eval_subset.tolist()}
    assert record["config"]["eval_subset"] == 6
    # none, 0 or a size >= the test set: no subset
    for value in (None, 0, 12):
        _, whole = build_openset_datasets(
            args_factory(data_dir=str(cub_dir), num_classes=3, num_labels=6, eval_subset=value),
            "fixmatch",
            MEAN,
            STD,
            None,
        )
        assert whole.test_subset is None and whole.eval_subset is None
