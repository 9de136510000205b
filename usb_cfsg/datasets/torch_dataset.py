"""USB ``BasicDataset`` over image files or arrays, every image decoded to RGB by ``load_rgb``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
from semilearn.datasets.cv_datasets.datasetbase import BasicDataset

from .images import load_rgb


def as_storage(items: Sequence[Any]) -> np.ndarray:
    """Store items compactly: paths as a numpy string array, images as one stacked array.

    A numpy array of strings avoids the copy-on-access memory growth that a Python list of
    strings causes in forked DataLoader workers.

    Args:
        items: File paths, or equally shaped image arrays (or one array stacking them).

    Returns:
        The array to keep in the dataset.
    """
    if isinstance(items, np.ndarray):
        return items
    if hasattr(items, "__array__") and not isinstance(items, (list, tuple)):  # lazy images (fmnist_cluttered)
        return np.asarray(items)
    if len(items) and all(isinstance(x, str) for x in items):
        return np.asarray(items, dtype=str)
    if len(items) == 0:
        return np.asarray([], dtype=str)
    return np.stack([np.asarray(x) for x in items])


class OpenSetDataset(BasicDataset):
    """A USB dataset whose items are file paths (or arrays) and whose images are made RGB.

    Items are returned exactly as USB's ``BasicDataset`` returns them (``{'idx_lb', 'x_lb',
    'y_lb'}`` labeled; ``{'idx_ulb', 'x_ulb_w', 'x_ulb_s'}`` unlabeled for FixMatch-style
    algorithms). Unlabeled items additionally carry ``'y_ulb'``: the true relabelled class
    (``>= num_classes`` means an unseen class), for diagnostics only; USB's ``process_batch``
    drops it unless an algorithm's ``train_step`` asks for it.

    Args:
        alg: Algorithm name (decides which views are returned, as in USB).
        items: Image paths or arrays.
        targets: Label of each item (seen classes ``0..K-1``; unlabeled items may be ``>= K``).
        num_classes: ``K``, the number of seen classes.
        transform: Weak (or eval) transform.
        is_ulb: Whether this is the unlabeled set.
        strong_transform: Strong transform (required for unlabeled sets of most algorithms).
    """

    def __init__(
        self,
        alg: str,
        items: Sequence[Any],
        targets: Union[Sequence[int], np.ndarray],
        num_classes: int,
        transform: Any,
        is_ulb: bool = False,
        strong_transform: Optional[Any] = None,
    ) -> None:
        #: Per item its object or cue box (x0, y0, x1, y1) as fractions of the image [N, 4], when the
        #: items carry boxes (fmnist_cluttered, fmnist_badged); None otherwise. Not returned by __getitem__.
        self.boxes: Optional[np.ndarray] = (
            np.asarray(items.boxes, dtype=np.float64) if hasattr(items, "boxes") else None
        )
        data = as_storage(items)
        labels = np.asarray(targets, dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} items but {len(labels)} targets")
        super().__init__(
            alg=alg,
            data=data,
            targets=labels,
            num_classes=num_classes,
            transform=transform,
            is_ulb=is_ulb,
            strong_transform=strong_transform,
            onehot=False,
        )

    def __sample__(self, idx: int) -> tuple[Any, int]:
        """Decode item ``idx`` to RGB (errors name the file) and return it with its label."""
        return load_rgb(self.data[idx]), int(self.targets[idx])

    #: When True (set by an algorithm's ``set_dataset``, e.g. OpenMatch's two weak views), labeled
    #: items also carry ``x_lb_w2`` and unlabeled items ``x_ulb_w2``: a second weak view of the same image.
    second_weak_view: bool = False

    #: When True (``augment_device``: set by ``batched_views.use_raw_views``), training items carry the
    #: image once, as a uint8 tensor (``x_lb_raw`` / ``x_ulb_raw``); the views are made on the device.
    raw_views: bool = False

    @property
    def deterministic_items(self) -> bool:
        """Whether items draw no random numbers (raw views), so a sampler need not seed them."""
        return self.raw_views

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if self.raw_views:
            from .batched_views import raw_item

            return raw_item(self, idx)
        if self.second_weak_view and self.transform is not None:
            return self._with_second_weak_view(idx)
        out = super().__getitem__(idx)
        if self.is_ulb and "idx_ulb" in out:
            out["y_ulb"] = int(self.targets[idx])
        return out

    def _with_second_weak_view(self, idx: int) -> dict[str, Any]:
        img, target = self.__sample__(idx)
        if isinstance(img, np.ndarray):
            from PIL import Image

            img = Image.fromarray(img)
        if not self.is_ulb:
            return {"idx_lb": idx, "x_lb": self.transform(img), "x_lb_w2": self.transform(img), "y_lb": target}
        out = {"idx_ulb": idx, "x_ulb_w": self.transform(img), "x_ulb_w2": self.transform(img), "y_ulb": target}
        if self.strong_transform is not None:
            out["x_ulb_s"] = self.strong_transform(img)
        return out
