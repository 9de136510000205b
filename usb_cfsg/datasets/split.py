"""The open-set semi-supervised split, one implementation for every dataset (DESIGN.md §4).

Given a :class:`~usb_cfsg.datasets.base.SourceData` with ``C`` classes:

* **Seen classes** (``K = num_seen``): the first ``K`` in the dataset's class order
  (``class_split="first"``), ``K`` drawn with ``numpy.random.default_rng(split_seed)``
  (``"random"``, then kept in the dataset's class order), the Semantic Shift Benchmark's known
  classes (``"ssb"``, CUB-200-2011, FGVC-Aircraft and Stanford Cars only; the caller resolves
  them with :func:`usb_cfsg.datasets.ssb.ssb_classes` and passes them as ``seen_classes``), or
  exactly ``seen_classes`` (names or indices, in the order given). Seen classes are relabelled
  ``0..K-1`` in that order; the other
  classes, in the dataset's order, become ``K..C-1``.
* **Labeled set**: ``num_labels / K`` training images of every seen class.
* **Unlabeled set**: every training image (``include_lb_to_ulb=True``, USB's default) or every
  training image not labeled, of seen and unseen classes alike. With ``ulb_unseen_ratio = r``
  (``0 <= r < 1``) unseen-class images are randomly subsampled, when needed, so that they make up
  at most a fraction ``r`` of the unlabeled set: at most ``floor(r * S / (1 - r))`` of them are
  kept, ``S`` being the number of seen-class unlabeled images. ``r = 0`` gives closed-set SSL.
* **Eval set**: the test images of seen classes. **Open-set test set**: all test images.

Reproducibility: random choices never depend on the order the reader produced the items in.
Within a class, candidates are sorted by a content key (the file path, or the position for
in-memory datasets whose order is fixed by the file) before choosing, each seen class draws from
its own generator seeded by ``(seed, class index)``, and every index list is ordered by that key.
So the same arguments on the same files select the same images, and in the same order, even when
annotation lines are shuffled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import DatasetError, did_you_mean
from .base import SourceData

#: Stream id mixed into the seed of the unseen-class subsampling generator.
_ULB_STREAM = 0x554C42

ClassRef = Union[int, str]


@dataclass(eq=False)
class OpenSetSplit:
    """Which images and classes go where; every index is into the source's train or test items.

    Attributes:
        num_classes: ``C``, the number of classes of the source.
        seen_classes: Original indices of the ``K`` seen classes, in new label order.
        unseen_classes: Original indices of the unseen classes, in new label order (``K..C-1``).
        lb_indices: Labeled training images (grouped by new label).
        ulb_indices: Unlabeled training images.
        eval_indices: Test images of seen classes.
        test_indices: All test images (the open-set test).
        class_to_label: ``class_to_label[c]`` is the new label of original class ``c`` (seen
            classes ``0..K-1``, unseen ``K..C-1``).
        params: The arguments the split was made with.
    """

    num_classes: int
    seen_classes: list[int]
    unseen_classes: list[int]
    lb_indices: np.ndarray
    ulb_indices: np.ndarray
    eval_indices: np.ndarray
    test_indices: np.ndarray
    class_to_label: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seen(self) -> int:
        """``K``, the number of seen classes."""
        return len(self.seen_classes)

    @property
    def label_to_class(self) -> np.ndarray:
        """``label_to_class[l]`` is the original class of new label ``l`` (seen then unseen)."""
        return np.asarray(self.seen_classes + self.unseen_classes, dtype=np.int64)

    def relabel(self, targets: np.ndarray) -> np.ndarray:
        """Map original class indices to new labels (unseen classes keep distinct labels >= K)."""
        return self.class_to_label[np.asarray(targets, dtype=np.int64)]

    def open_label(self, targets: np.ndarray) -> np.ndarray:
        """Map original class indices to ``0..K-1`` for seen classes and ``K`` ("unknown") otherwise."""
        return np.minimum(self.relabel(targets), self.num_seen)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of the split (plain ints and lists)."""
        return {
            "num_classes": int(self.num_classes),
            "num_seen": int(self.num_seen),
            "seen_classes": [int(c) for c in self.seen_classes],
            "unseen_classes": [int(c) for c in self.unseen_classes],
            "class_to_label": self.class_to_label.tolist(),
            "lb_indices": self.lb_indices.tolist(),
            "ulb_indices": self.ulb_indices.tolist(),
            "eval_indices": self.eval_indices.tolist(),
            "test_indices": self.test_indices.tolist(),
            "params": dict(self.params),
        }

    def to_json(self, indent: Optional[int] = None) -> str:
        """The split as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSetSplit:
        """Rebuild a split from :meth:`to_dict` output."""
        as_idx = lambda key: np.asarray(data[key], dtype=np.int64)  # noqa: E731
        return cls(
            num_classes=int(data["num_classes"]),
            seen_classes=[int(c) for c in data["seen_classes"]],
            unseen_classes=[int(c) for c in data["unseen_classes"]],
            lb_indices=as_idx("lb_indices"),
            ulb_indices=as_idx("ulb_indices"),
            eval_indices=as_idx("eval_indices"),
            test_indices=as_idx("test_indices"),
            class_to_label=as_idx("class_to_label"),
            params=dict(data.get("params", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> OpenSetSplit:
        """Rebuild a split from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def _resolve_one(class_names: Sequence[str], ref: ClassRef, exact: dict[str, int], loose: dict[str, int]) -> int:
    """Original index of one class given by name or index."""
    if isinstance(ref, (bool, np.bool_)) or not isinstance(ref, (int, np.integer, str)):
        raise DatasetError(f"seen_classes: {ref!r} is neither a class name nor a class index")
    if isinstance(ref, str):
        if ref in exact:
            return exact[ref]
        if _norm(ref) in loose:
            return loose[_norm(ref)]
        if not ref.strip().isdigit():
            raise DatasetError(
                f"seen_classes: unknown class {ref!r}{did_you_mean(ref, class_names)} "
                f"(the dataset has {len(class_names)} classes, e.g. {', '.join(map(repr, class_names[:3]))})"
            )
    idx = int(ref)
    if not 0 <= idx < len(class_names):
        raise DatasetError(f"seen_classes: class index {idx} is out of range 0..{len(class_names) - 1}")
    return idx


def resolve_classes(class_names: Sequence[str], refs: Sequence[ClassRef]) -> list[int]:
    """Turn class names or indices into original class indices.

    Names match exactly, else ignoring case, underscores and repeated spaces. A string of digits
    that is not a class name is an index.

    Raises:
        DatasetError: On an unknown name, an index out of range, or a class given twice.
    """
    exact = {n: i for i, n in enumerate(class_names)}
    loose: dict[str, int] = {}
    for i, n in enumerate(class_names):
        loose.setdefault(_norm(n), i)
    out: list[int] = []
    for ref in refs:
        idx = _resolve_one(class_names, ref, exact, loose)
        if idx in out:
            raise DatasetError(f"seen_classes: class {class_names[idx]!r} (index {idx}) is given twice")
        out.append(idx)
    return out


def _choose_seen(
    source: SourceData,
    num_seen: int,
    class_split: str,
    split_seed: int,
    seen_classes: Optional[Sequence[ClassRef]],
) -> list[int]:
    num_classes = source.num_classes
    if num_seen < 1 or num_seen > num_classes:
        raise DatasetError(
            f"num_classes (seen classes) = {num_seen}, but {source.name} has {num_classes} classes; "
            f"use 1..{num_classes} (usually fewer than {num_classes}, so that some classes stay unseen)"
        )
    if class_split == "ssb" and seen_classes is None:
        raise DatasetError(
            "class_split 'ssb' needs the benchmark's known classes: resolve them with "
            "usb_cfsg.datasets.ssb.ssb_classes(...) and pass them as seen_classes "
            "(build_openset_datasets does this)"
        )
    if seen_classes is not None:
        if isinstance(seen_classes, (str, bytes)) or not isinstance(seen_classes, Sequence):
            raise DatasetError(f"seen_classes must be a list of class names or indices, got {seen_classes!r}")
        chosen = resolve_classes(source.class_names, list(seen_classes))
        if len(chosen) != num_seen:
            raise DatasetError(
                f"seen_classes lists {len(chosen)} classes but num_classes (seen classes) is {num_seen}; "
                "make them agree"
            )
        return chosen
    if class_split == "first":
        return list(range(num_seen))
    if class_split == "random":
        rng = np.random.default_rng(split_seed)
        return sorted(int(c) for c in rng.choice(num_classes, size=num_seen, replace=False))
    raise DatasetError(f"class_split must be 'first', 'random' or 'ssb', got {class_split!r}")


def _order_key(items: Union[Sequence[Any], np.ndarray]) -> np.ndarray:
    """Positions of ``items`` sorted by content key: the path for files, the position otherwise.

    In-memory datasets (arrays) have their order fixed by the data file, so position is content.
    """
    if isinstance(items, np.ndarray) and items.dtype.kind not in "US":
        return np.arange(len(items))
    if not all(isinstance(x, str) for x in items):
        return np.arange(len(items))
    return np.argsort(np.asarray(items, dtype=str), kind="stable")


def make_openset_split(
    source: SourceData,
    *,
    num_seen: int,
    num_labels: int,
    class_split: str = "first",
    split_seed: int = 0,
    seen_classes: Optional[Sequence[ClassRef]] = None,
    ulb_unseen_ratio: Optional[float] = None,
    include_lb_to_ulb: bool = True,
    seed: int = 0,
) -> OpenSetSplit:
    """Split a source into labeled, unlabeled, eval and open-set test parts.

    See the module docstring for the protocol.

    Args:
        source: The dataset.
        num_seen: ``K``, the number of seen classes.
        num_labels: Total labeled images; must be a multiple of ``K``.
        class_split: ``"first"``, ``"random"`` (both ignored when ``seen_classes`` is given) or
            ``"ssb"`` (recorded; ``seen_classes`` must then hold the benchmark's known classes).
        split_seed: Seed of the random class split.
        seen_classes: Names or indices of the seen classes, in label order (``K`` of them).
        ulb_unseen_ratio: Upper bound on the fraction of unseen-class images in the unlabeled
            set (``0 <= r < 1``), or ``None`` to keep them all.
        include_lb_to_ulb: Whether labeled images are also in the unlabeled set (as USB).
        seed: Seed of the choice of labeled images and of the unseen-class subsampling.

    Returns:
        The split.

    Raises:
        DatasetError: When the arguments are inconsistent with each other or the data (the
            message names the numbers involved).
    """
    seen = _choose_seen(source, int(num_seen), class_split, int(split_seed), seen_classes)
    seen_set = set(seen)
    unseen = [c for c in range(source.num_classes) if c not in seen_set]
    k = len(seen)
    class_to_label = np.empty(source.num_classes, dtype=np.int64)
    class_to_label[seen + unseen] = np.arange(source.num_classes)

    if num_labels < k or num_labels % k != 0:
        raise DatasetError(
            f"num_labels = {num_labels} must be a positive multiple of num_classes = {k} (seen classes), "
            f"so that every seen class gets the same number of labels; e.g. {k * max(1, num_labels // k)}"
        )
    if ulb_unseen_ratio is not None and not 0.0 <= float(ulb_unseen_ratio) < 1.0:
        raise DatasetError(f"ulb_unseen_ratio must be in [0, 1) or none, got {ulb_unseen_ratio!r}")
    per_class = num_labels // k

    train_targets = np.asarray(source.train_targets, dtype=np.int64)
    test_targets = np.asarray(source.test_targets, dtype=np.int64)
    train_order = _order_key(source.train_items)
    test_order = _order_key(source.test_items)
    rank = np.empty(len(train_order), dtype=np.int64)
    rank[train_order] = np.arange(len(train_order))

    lb_parts: list[np.ndarray] = []
    for c in seen:
        members = train_order[train_targets[train_order] == c]  # sorted by content key
        if len(members) < per_class:
            raise DatasetError(
                f"seen class {source.class_names[c]!r} (index {c}) has {len(members)} training image(s), "
                f"fewer than the {per_class} labels per class asked for (num_labels = {num_labels} over "
                f"{k} seen classes); lower num_labels"
            )
        rng = np.random.default_rng([int(seed), int(c)])
        picked = np.sort(rng.choice(len(members), size=per_class, replace=False))
        lb_parts.append(members[picked])
    lb = np.concatenate(lb_parts) if lb_parts else np.empty(0, dtype=np.int64)

    pool = train_order.copy()
    if not include_lb_to_ulb:
        is_lb = np.zeros(len(train_targets), dtype=bool)
        is_lb[lb] = True
        pool = pool[~is_lb[pool]]
    pool_seen = np.isin(train_targets[pool], seen)
    if ulb_unseen_ratio is not None:
        ratio = float(ulb_unseen_ratio)
        n_seen, unseen_pool = int(pool_seen.sum()), pool[~pool_seen]
        cap = int(np.floor(ratio * n_seen / (1.0 - ratio) + 1e-9))
        if len(unseen_pool) > cap:
            # Order the unseen pool by (class, key) so the choice depends on content only.
            by_class = unseen_pool[np.lexsort((rank[unseen_pool], train_targets[unseen_pool]))]
            rng = np.random.default_rng([int(seed), _ULB_STREAM])
            kept = by_class[rng.choice(len(by_class), size=cap, replace=False)]
            keep = np.zeros(len(train_targets), dtype=bool)
            keep[kept] = True
            pool = pool[pool_seen | keep[pool]]
    ulb = pool

    eval_idx = test_order[np.isin(test_targets[test_order], seen)]
    params = {
        "num_seen": k,
        "num_labels": int(num_labels),
        "class_split": class_split,
        "split_seed": int(split_seed),
        "seen_classes": None if seen_classes is None else [int(c) for c in seen],
        "ulb_unseen_ratio": None if ulb_unseen_ratio is None else float(ulb_unseen_ratio),
        "include_lb_to_ulb": bool(include_lb_to_ulb),
        "seed": int(seed),
    }
    return OpenSetSplit(
        num_classes=source.num_classes,
        seen_classes=seen,
        unseen_classes=unseen,
        lb_indices=lb.astype(np.int64),
        ulb_indices=ulb.astype(np.int64),
        eval_indices=eval_idx.astype(np.int64),
        test_indices=test_order.astype(np.int64),
        class_to_label=class_to_label,
        params=params,
    )
