"""USB glue: from ``args`` to the datasets an algorithm's ``set_dataset`` returns."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import DatasetError
from .base import SourceData, read_source, reader_options, take
from .split import OpenSetSplit, make_openset_split
from .transforms import build_transforms

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
#: Key in the dataset dict of the unlabeled training images with the evaluation transform.
CALIBRATION_SET = "train_ulb_eval"
#: Key of the labeled training images with the evaluation transform (``threshold_rule: labeled_tpr``).
LABELED_CALIBRATION_SET = "train_lb_eval"
#: Most unlabeled training images in :data:`CALIBRATION_SET` (evenly spaced over the unlabeled set):
#: the evaluator's score calibration needs no more, and an image cache then holds no more.
CALIBRATION_MAX_IMAGES = 2000


#: Seed offset of the in-training evaluation subset (``eval_subset``): mixed with ``split_seed``.
EVAL_SUBSET_SEED = 23


def stratified_subset(labels: Union[Sequence[int], np.ndarray], size: int, seed: int) -> np.ndarray:
    """A fixed, seeded, class-stratified subset of ``size`` positions of ``labels`` (sorted).

    Every class keeps its share of the images (largest-remainder rounding, at least one image per
    class when ``size`` allows it); within a class the images are a seeded random choice. The same
    labels, size and seed give the same subset on every machine.

    Args:
        labels: Class of every image.
        size: Images to keep; ``size >= len(labels)`` keeps all of them.
        seed: Seed of the choice.

    Returns:
        Sorted int64 positions into ``labels``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (size / n)
    take = np.floor(exact).astype(np.int64)
    if size >= len(classes):
        take = np.maximum(take, 1)
    remainder = exact - np.floor(exact)
    order = np.argsort(-remainder, kind="stable")
    i = 0
    while take.sum() < size:  # largest remainders first
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > size:  # the at-least-one rule overshot: trim the largest classes
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng([int(seed), EVAL_SUBSET_SEED])
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def calibration_indices(available: int, cap: int) -> np.ndarray:
    """``min(available, cap)`` indices spread evenly over ``0 .. available-1`` (deterministic)."""
    if available <= cap:
        return np.arange(available)
    return np.unique(np.linspace(0, available - 1, cap).round().astype(np.int64))


@dataclass
class OpenSetInfo:
    """What the rest of the plug-in needs to know about the data besides the datasets.

    Attributes:
        dataset: Registry name of the dataset.
        seen_class_names: Names of the ``K`` seen classes, in label order.
        unseen_class_names: Names of the unseen classes (labels ``K..C-1``; "unknown" is ``K`` in
            the open-set test).
        prompt_templates: Text prompt templates with one ``{}``.
        num_seen: ``K``.
        split: The split itself.
        test_difficulty: With ``class_split: ssb``, per open-set test image (``test_open`` order) the
            Semantic Shift Benchmark difficulty of its class ("Easy", "Medium", "Hard"; ``""`` for
            a seen-class image); None otherwise.
        unseen_difficulty: With ``class_split: ssb``, unseen class name -> difficulty; None otherwise.
        test_subset: With ``eval_subset`` set (fewer than all test images), the positions in
            ``test_open`` of the in-training evaluation subset (:func:`stratified_subset` over the
            original test classes); None = evaluate on all test images.
        eval_subset: The positions in ``eval`` of the same images' seen-class part; None with ``test_subset``.
        test_boxes: For datasets whose images carry an object box (``fmnist_cluttered``), per open-set
            test image (``test_open`` order) the box ``(x0, y0, x1, y1)`` as fractions of the image's
            width and height [N, 4]; None otherwise. The evaluator's localization metrics read it.
        eval_boxes: The same for the ``eval`` images (seen-class test images); None otherwise.
    """

    dataset: str
    seen_class_names: list[str]
    unseen_class_names: list[str]
    prompt_templates: tuple[str, ...]
    num_seen: int
    split: OpenSetSplit
    test_difficulty: Optional[list[str]] = None
    unseen_difficulty: Optional[dict[str, str]] = None
    test_subset: Optional[np.ndarray] = None
    eval_subset: Optional[np.ndarray] = None
    test_boxes: Optional[np.ndarray] = None
    eval_boxes: Optional[np.ndarray] = None

    @property
    def class_names(self) -> list[str]:
        """All class names in new label order (seen, then unseen)."""
        return self.seen_class_names + self.unseen_class_names


def _as_list(value: Any, key: str) -> Optional[list]:
    """Accept a list/tuple, a comma-separated string, or None for a list-valued config key."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "null"):
            return None
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise DatasetError(f"{key} must be a list (or a comma-separated string), got {value!r}")


def _as_ratio(value: Any) -> Optional[float]:
    """``ulb_unseen_ratio`` as a float, or None for none/null/empty."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"ulb_unseen_ratio must be a number in [0, 1) or none, got {value!r}") from None


def _relative(path: str, root: Optional[str]) -> str:
    if root:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            return path
    return path


def write_split_json(path: Path, source: SourceData, info: OpenSetInfo, data_dir: Optional[str], config: dict) -> None:
    """Write the split record (class names, index lists, config values) atomically.

    Args:
        path: Destination file.
        source: The dataset the split indexes into.
        info: The split and class names.
        data_dir: The dataset root, to store labeled file names relative to it.
        config: The configuration values the split and transforms were made with.
    """
    split = info.split
    record = {
        "dataset": info.dataset,
        "data_dir": data_dir,
        "num_train": len(source.train_items),
        "num_test": len(source.test_items),
        "class_names": list(source.class_names),
        "seen_class_names": info.seen_class_names,
        "unseen_class_names": info.unseen_class_names,
        "config": config,
        "split": split.to_dict(),
        "ssb_difficulty": info.unseen_difficulty,
        "sizes": {
            "train_lb": int(len(split.lb_indices)),
            "train_ulb": int(len(split.ulb_indices)),
            "eval": int(len(split.eval_indices)),
            "test_open": int(len(split.test_indices)),
        },
        # eval_subset: the in-training evaluation images (positions in test_open / eval); null = all
        "eval_subset": None
        if info.test_subset is None or info.eval_subset is None
        else {
            "test_open": info.test_subset.tolist(),
            "eval": info.eval_subset.tolist(),
        },
    }
    if not isinstance(source.train_items, np.ndarray) and not hasattr(source.train_items, "__array__"):
        record["lb_files"] = [_relative(str(source.train_items[i]), data_dir) for i in split.lb_indices.tolist()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def build_openset_datasets(
    args: Any,
    alg: str,
    mean: Sequence[float],
    std: Sequence[float],
    run_dir: Optional[str],
) -> tuple[dict[str, Any], OpenSetInfo]:
    """Read, split and wrap the dataset named by ``args`` for USB.

    Reads ``args.dataset, data_dir, num_classes`` (= K, seen classes), ``num_labels, img_size,
    crop_ratio, seed, include_lb_to_ulb`` and, when present, ``class_split`` ("first"),
    ``split_seed`` (0), ``seen_classes`` (None), ``ulb_unseen_ratio`` (None), ``download``
    (False), ``skip_bad_images`` (False), ``class_names`` (None), ``pretrain_pool`` (None: a demo
    CLIP card whose pretraining images are dropped from the training set), ``eval_subset`` (None: the
    size of the in-training evaluation subset, ``info.test_subset`` / ``info.eval_subset``). Sets
    nothing on ``args``.

    Args:
        args: USB's argument namespace (or any object with those attributes).
        alg: Algorithm name (decides which views unlabeled items carry).
        mean: Normalisation mean of the backbone.
        std: Normalisation standard deviation of the backbone.
        run_dir: Where to write ``split.json``; ``None`` writes nothing.

    Returns:
        ``(datasets, info)``: ``datasets`` has ``'train_lb'``, ``'train_ulb'``, ``'eval'``
        (seen-class test images, labels ``0..K-1``), ``'test'`` (``None``), ``'test_open'``
        (all test images, unseen classes labelled ``K``) and :data:`CALIBRATION_SET`
        (``'train_ulb_eval'``: at most :data:`CALIBRATION_MAX_IMAGES` unlabeled training images,
        evenly spaced, with the evaluation transform, for the evaluator's calibration on training
        data) and :data:`LABELED_CALIBRATION_SET` (``'train_lb_eval'``: the labeled images with the
        evaluation transform, for ``threshold_rule: labeled_tpr``).

    Raises:
        DatasetError: On a missing or malformed dataset or an impossible split.
        ConfigError: On bad transform settings.
    """
    from .torch_dataset import OpenSetDataset

    config = {
        "dataset": args.dataset,
        "data_dir": getattr(args, "data_dir", None),
        "num_classes": int(args.num_classes),
        "num_labels": int(args.num_labels),
        "class_split": getattr(args, "class_split", "first") or "first",
        "split_seed": int(getattr(args, "split_seed", 0) or 0),
        "seen_classes": _as_list(getattr(args, "seen_classes", None), "seen_classes"),
        "ulb_unseen_ratio": _as_ratio(getattr(args, "ulb_unseen_ratio", None)),
        "include_lb_to_ulb": bool(getattr(args, "include_lb_to_ulb", True)),
        "seed": int(getattr(args, "seed", 0) or 0),
        "img_size": int(args.img_size),
        "crop_ratio": float(args.crop_ratio),
        "download": bool(getattr(args, "download", False)),
        "skip_bad_images": bool(getattr(args, "skip_bad_images", False)),
        "class_names": _as_list(getattr(args, "class_names", None), "class_names"),
        "pretrain_pool": getattr(args, "pretrain_pool", None) or None,
        "eval_subset": int(getattr(args, "eval_subset", None) or 0),
    }
    for key in ("scene_size", "scene_fragments", "scene_seed", "badge_size"):  # scene and badge keys, when given
        if getattr(args, key, None) is not None and key in reader_options(config["dataset"], {key: 0}):
            config[key] = int(getattr(args, key))
    for key in ("badge_items", "badge_marks"):
        if getattr(args, key, None) is not None and key in reader_options(config["dataset"], {key: 0}):
            config[key] = _as_list(getattr(args, key), key)
    if getattr(args, "badge_erase", None) and "badge_erase" in reader_options(config["dataset"], {"badge_erase": 1}):
        config["badge_erase"] = True
    ssb = config["class_split"] == "ssb"
    if ssb and config["seen_classes"] is not None:
        raise DatasetError("class_split: ssb fixes the seen classes, but seen_classes is given too; drop one of them")
    if ssb:  # fail before reading any data
        from .ssb import SSB_DATASETS

        if config["dataset"] not in SSB_DATASETS:
            raise DatasetError(
                f"class_split: ssb exists for {sorted(SSB_DATASETS)} only, not {config['dataset']!r}; "
                f"use class_split: first or random, or list seen_classes"
            )
        if config["num_classes"] != SSB_DATASETS[config["dataset"]][1]:
            known = SSB_DATASETS[config["dataset"]][1]
            raise DatasetError(
                f"class_split: ssb on {config['dataset']} fixes {known} known classes, but "
                f"num_classes = {config['num_classes']}; set num_classes: {known} (and num_labels a "
                f"multiple of {known})"
            )
    source = read_source(
        config["dataset"],
        config["data_dir"],
        download=config["download"],
        skip_bad_images=config["skip_bad_images"],
        # with ssb the benchmark's indices are resolved on the dataset's own names; display names come after
        class_names=None if ssb else config["class_names"],
        **reader_options(config["dataset"], config),
    )
    if config["pretrain_pool"]:  # a demo CLIP card: its pretraining images never enter the split
        from .pretrain_pool import without_pretrain_pool

        source = without_pretrain_pool(source, config["pretrain_pool"])
    seen_classes = config["seen_classes"]
    ssb_split = None
    if ssb:
        from .common import apply_class_names
        from .ssb import ssb_classes

        ssb_split = ssb_classes(source.name, config["num_classes"], source.class_names, source.train_targets)
        seen_classes = ssb_split.seen_classes
        source.class_names = apply_class_names(source.name, source.class_names, config["class_names"])
    split = make_openset_split(
        source,
        num_seen=config["num_classes"],
        num_labels=config["num_labels"],
        class_split=config["class_split"],
        split_seed=config["split_seed"],
        seen_classes=seen_classes,
        ulb_unseen_ratio=config["ulb_unseen_ratio"],
        include_lb_to_ulb=config["include_lb_to_ulb"],
        seed=config["seed"],
    )
    k = split.num_seen
    weak, strong, evaluate = build_transforms(config["img_size"], config["crop_ratio"], mean, std)
    train_t = np.asarray(source.train_targets, dtype=np.int64)
    test_t = np.asarray(source.test_targets, dtype=np.int64)

    def subset(indices: np.ndarray, from_train: bool) -> tuple[Any, np.ndarray]:
        items = source.train_items if from_train else source.test_items
        targets = train_t if from_train else test_t
        return take(items, indices), targets[indices]

    lb_items, lb_t = subset(split.lb_indices, True)
    ulb_items, ulb_t = subset(split.ulb_indices, True)
    ev_items, ev_t = subset(split.eval_indices, False)
    te_items, te_t = subset(split.test_indices, False)
    cal_idx = calibration_indices(len(ulb_items), CALIBRATION_MAX_IMAGES)
    datasets = {
        "train_lb": OpenSetDataset(alg, lb_items, split.relabel(lb_t), k, weak, is_ulb=False, strong_transform=strong),
        "train_ulb": OpenSetDataset(
            alg, ulb_items, split.relabel(ulb_t), k, weak, is_ulb=True, strong_transform=strong
        ),
        "eval": OpenSetDataset(alg, ev_items, split.relabel(ev_t), k, evaluate),
        "test": None,
        "test_open": OpenSetDataset(alg, te_items, split.open_label(te_t), k + 1, evaluate),
        # at most CALIBRATION_MAX_IMAGES unlabeled images with the evaluation transform: where the
        # evaluator fits its score ranges and thresholds (training data only; labels never read)
        CALIBRATION_SET: OpenSetDataset(
            alg, take(ulb_items, cal_idx), split.open_label(ulb_t[cal_idx]), k + 1, evaluate
        ),
        # the labeled images with the evaluation transform: threshold_rule labeled_tpr fits thresholds on them
        LABELED_CALIBRATION_SET: OpenSetDataset(alg, lb_items, split.relabel(lb_t), k, evaluate),
    }
    info = OpenSetInfo(
        dataset=source.name,
        seen_class_names=[source.class_names[c] for c in split.seen_classes],
        unseen_class_names=[source.class_names[c] for c in split.unseen_classes],
        prompt_templates=tuple(source.prompt_templates),
        num_seen=k,
        split=split,
    )
    if 0 < config["eval_subset"] < len(te_items):
        # in-training evaluations: a fixed, seeded, class-stratified subset (over the original classes)
        info.test_subset = stratified_subset(te_t, config["eval_subset"], config["split_seed"])
        info.eval_subset = np.flatnonzero(np.isin(split.eval_indices, split.test_indices[info.test_subset]))
    if hasattr(te_items, "boxes"):  # images with an object box (fmnist_cluttered) or a mark's box (fmnist_badged)
        info.test_boxes = np.asarray(te_items.boxes, dtype=np.float64)
        info.eval_boxes = np.asarray(ev_items.boxes, dtype=np.float64)
    if ssb_split is None and source.class_groups:  # near/far-OOD groups of the dataset's unseen classes
        from .ssb import difficulty_of_images

        unseen_groups = {c: source.class_groups[c] for c in split.unseen_classes if c in source.class_groups}
        info.test_difficulty = difficulty_of_images(te_t, unseen_groups)
        info.unseen_difficulty = {source.class_names[c]: g for c, g in unseen_groups.items()}
    if ssb_split is not None:
        from .ssb import difficulty_of_images

        info.test_difficulty = difficulty_of_images(te_t, ssb_split.difficulty)
        info.unseen_difficulty = {source.class_names[c]: ssb_split.difficulty[c] for c in split.unseen_classes}
    if info.test_subset is not None and info.eval_subset is not None:
        logger.info(
            "eval_subset: evaluations during training use %d of the %d open-set test images (%d of %d seen-class "
            "eval images; class-stratified, seed split_seed %d); the final evaluation uses all of them",
            len(info.test_subset),
            len(te_items),
            len(info.eval_subset),
            len(ev_items),
            config["split_seed"],
        )
    n_unseen_ulb = int((split.relabel(ulb_t) >= k).sum())
    logger.info(
        "%s: %d seen / %d unseen classes; labeled %d, unlabeled %d (%d of unseen classes), eval %d, open-set test %d",
        source.name,
        k,
        len(split.unseen_classes),
        len(lb_items),
        len(ulb_items),
        n_unseen_ulb,
        len(ev_items),
        len(te_items),
    )
    if run_dir is not None:
        write_split_json(Path(run_dir) / SPLIT_FILE, source, info, config["data_dir"], config)
    return datasets, info
