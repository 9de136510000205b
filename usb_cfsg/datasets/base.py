"""What every dataset reader returns, and the dataset registry.

A *reader* turns a dataset as its publisher ships it into a :class:`SourceData`; the open-set
split (``usb_cfsg.datasets.split``) and the USB glue (``usb_cfsg.datasets.build``) work on that
alone, so one split implementation serves every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..registry import Registry


def take(items: Union[Sequence[Any], np.ndarray], indices: np.ndarray) -> Any:
    """``items[indices]`` for a list, an array, or a lazy sequence with ``take`` (fmnist_cluttered's scenes)."""
    if isinstance(items, np.ndarray):
        return items[indices]
    if not isinstance(items, (list, tuple)) and hasattr(items, "take"):
        return items.take(indices)
    return [items[i] for i in indices.tolist()]


#: One training or test item: a path to an image file, or an in-memory uint8 image (HxW or HxWxC).
Item = Union[str, np.ndarray]


@dataclass
class SourceData:
    """A dataset before any split.

    Attributes:
        name: Registry name of the dataset.
        class_names: Human-readable class names, in the dataset's own class order.
        train_items: Training images (file paths or arrays).
        train_targets: Class index of each training image (int64, into ``class_names``).
        test_items: Test images.
        test_targets: Class index of each test image.
        prompt_templates: Text prompt templates with one ``{}`` for the class name.
        class_groups: Optional class index -> group name of unseen classes that the evaluator reports
            separately (``fmnist_badged``: ``near`` / ``far``); applied to the classes a split leaves unseen.
    """

    name: str
    class_names: list[str]
    train_items: Union[Sequence[Item], np.ndarray]
    train_targets: np.ndarray
    test_items: Union[Sequence[Item], np.ndarray]
    test_targets: np.ndarray
    prompt_templates: tuple[str, ...] = field(default=("a photo of a {}.",))
    class_groups: Optional[dict[int, str]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


#: A reader: ``reader(root, download=False, skip_bad_images=False, class_names=None) -> SourceData``.
Reader = Callable[..., SourceData]

DATASETS: Registry[Reader] = Registry("dataset")
register_dataset = DATASETS.register


def read_source(name: str, root: Optional[str], **kwargs) -> SourceData:
    """Read dataset ``name`` from ``root`` through the registry."""
    return DATASETS.get(name)(root, **kwargs)


#: Config keys a reader may take as keyword arguments besides the four every reader takes
#: (``fmnist_cluttered``: the scene keys, and ``pretrain_pool`` to choose its clutter's donors;
#: ``fmnist_badged``: ``scene_size``, ``scene_seed`` and the badge keys).
READER_OPTIONS = (
    "scene_size",
    "scene_fragments",
    "scene_seed",
    "pretrain_pool",
    "badge_size",
    "badge_items",
    "badge_marks",
    "badge_erase",
)


def reader_options(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`READER_OPTIONS` that reader ``name`` accepts, from ``values`` (absent or None: left out)."""
    import inspect

    params = inspect.signature(DATASETS.get(name)).parameters
    return {k: values[k] for k in READER_OPTIONS if k in params and values.get(k) is not None}
