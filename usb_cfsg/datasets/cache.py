"""Decoded-image cache (``cache_images: true``): decode and resize every image once, share it.

Fine-grained training sets are small (CUB-200-2011: 5,994 training images), while decoding a
JPEG and resizing it costs more than the rest of USB's weak augmentation. With the cache, each
dataset's images go once through the deterministic head of its transform (USB's recipe:
``Resize((r, r))`` for the weak and strong training views, ``Resize(r)`` + ``CenterCrop`` for
evaluation), are stored as one uint8 tensor [N, H, W, 3] in shared memory (each DataLoader
worker maps the same pages instead of holding a copy), and the dataset then runs only the rest
of its transforms on them. The images a model sees are exactly those it sees without the cache
(same pixels, same augmentations for the same seeds).

Images shared by several datasets (labeled images reused as unlabeled, the seen-class test
images in both ``eval`` and ``test_open``) are stored once.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

#: torchvision transforms that do not draw random numbers and may be applied once, ahead of time
_DETERMINISTIC = ("Resize", "CenterCrop")


def split_transform(transform: Any) -> Tuple[List[Any], Any]:
    """Split a ``Compose`` into its deterministic head (resizes, centre crops) and the rest.

    Args:
        transform: A torchvision ``Compose`` (anything else has no head to split off).

    Returns:
        ``(head, rest)``: the leading deterministic transforms and a ``Compose`` of the others.
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    n = 0
    while n < len(steps) and type(steps[n]).__name__ in _DETERMINISTIC:
        n += 1
    if n == 0:
        return [], transform
    return steps[:n], T.Compose(steps[n:])


def _signature(head: Sequence[Any]) -> str:
    return " > ".join(repr(t) for t in head)


class CachedSample:
    """A dataset's ``__sample__`` reading the cache: ``idx -> (PIL image, target)``.

    Args:
        images: The shared uint8 tensor [M, H, W, 3].
        rows: Row of each dataset item in ``images`` [N].
        targets: The dataset's targets [N].
    """

    def __init__(self, images: torch.Tensor, rows: np.ndarray, targets: np.ndarray) -> None:
        self.images = images
        self.rows = rows
        self.targets = targets

    def __call__(self, idx: int) -> Tuple[Image.Image, int]:
        return Image.fromarray(self.images[int(self.rows[idx])].numpy()), int(self.targets[idx])

    def array(self, idx: int) -> torch.Tensor:
        """Item ``idx``'s cached image as the shared uint8 tensor [H, W, 3] itself (a view, no copy)."""
        return self.images[int(self.rows[idx])]


def _shm_free_bytes() -> Optional[int]:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _allocate(shape: Tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor in shared memory when /dev/shm has room (with a margin), else in ordinary memory.

    Forked DataLoader workers share ordinary memory pages too (nothing writes them); shared memory
    additionally keeps spawned workers from receiving a copy.
    """
    images = torch.empty(shape, dtype=torch.uint8)
    free = _shm_free_bytes()
    if free is not None and free > 2 * images.numel():
        return images.share_memory_()
    logger.info(
        "cache_images: /dev/shm has %s free, too little for %.2f GB: the cache stays in process memory",
        "unknown" if free is None else f"{free / 2**30:.2f} GB",
        images.numel() / 2**30,
    )
    return images


def _decode_all(
    decode: Callable[[int], np.ndarray], count: int, shape_hint: Tuple[int, ...], threads: int
) -> torch.Tensor:
    images = _allocate((count,) + shape_hint)

    def fill(i: int) -> None:
        arr = decode(i)
        if arr.shape != shape_hint:
            raise ValueError(f"cached image {i} has shape {arr.shape}, expected {shape_hint}")
        images[i] = torch.from_numpy(arr)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(fill, range(count)))
    return images


def attach_image_cache(
    datasets: Dict[str, Any], threads: Optional[int] = None, budget_bytes: Optional[int] = None
) -> Dict[str, Any]:
    """Give every image dataset in ``datasets`` a decoded-image cache (in place).

    A dataset is cached when its transform starts with deterministic resizing that gives
    equally sized images and its strong transform (if any) starts with the same steps;
    otherwise it is left as it is, with a logged reason.

    Args:
        datasets: USB's dataset dict (``train_lb``, ``train_ulb``, ``eval``, ``test_open``; None
            entries are skipped). Datasets must decode items with ``__sample__(idx)`` (USB's
            ``BasicDataset`` and our ``OpenSetDataset`` do).
        threads: Decoding threads (default: the CPU count, at most 16).
        budget_bytes: When given, nothing is cached (and a notice logged) if the decoded images
            would take more than this; the size is known from each group's first image, before
            the rest are decoded.

    Returns:
        A summary: per cached dataset its image count and shape, the unique images stored and
        the bytes they take (``skipped``: why nothing was cached, when over the budget).
    """
    threads = threads or min(16, os.cpu_count() or 1)
    groups: Dict[str, Dict[str, Any]] = {}
    plans = []
    for name, ds in datasets.items():
        if ds is None or not hasattr(ds, "__sample__") or getattr(ds, "transform", None) is None:
            continue
        head, rest = split_transform(ds.transform)
        if not head:
            logger.warning("cache_images: %s not cached: its transform does not start with a resize", name)
            continue
        strong = getattr(ds, "strong_transform", None)
        rest_strong = None
        if strong is not None:
            head_s, rest_strong = split_transform(strong)
            if _signature(head_s) != _signature(head):
                logger.warning("cache_images: %s not cached: weak and strong views resize differently", name)
                continue
        sig = _signature(head)
        group = groups.setdefault(sig, {"head": head, "keys": {}, "sources": []})
        data = getattr(ds, "data", None)
        by_path = isinstance(data, np.ndarray) and data.dtype.kind in ("U", "S")
        rows = np.empty(len(ds), dtype=np.int64)
        for i in range(len(ds)):
            key = ("path", str(data[i])) if by_path and data is not None else ("item", id(ds), i)
            row = group["keys"].get(key)
            if row is None:
                row = group["keys"][key] = len(group["sources"])
                group["sources"].append((ds, i))
            rows[i] = row
        plans.append((name, ds, sig, rows, rest, rest_strong))

    summary: Dict[str, Any] = {"datasets": {}, "unique_images": 0, "bytes": 0}
    for group in groups.values():
        sources, head = group["sources"], group["head"]

        def decode(r: int, sources=sources, head=head) -> np.ndarray:
            ds, i = sources[r]
            img = ds.__sample__(i)[0]
            for t in head:
                img = t(img)
            return np.array(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)

        group["decode"], group["shape"] = decode, decode(0).shape
    need = sum(len(g["sources"]) * int(np.prod(g["shape"])) for g in groups.values())
    if budget_bytes is not None and need > budget_bytes:
        summary["skipped"] = (
            f"the decoded images would take {need / 2**30:.2f} GB, over the cache budget of "
            f"{budget_bytes / 2**30:.2f} GB (cache_budget_gb; cache_images: true caches anyway)"
        )
        logger.info("cache_images: not cached: %s", summary["skipped"])
        return summary
    for group in groups.values():
        sources = group["sources"]
        group["images"] = _decode_all(group["decode"], len(sources), group["shape"], threads)
        summary["unique_images"] += len(sources)
        summary["bytes"] += group["images"].numel()
    for name, ds, sig, rows, rest, rest_strong in plans:
        images = groups[sig]["images"]
        ds.__sample__ = CachedSample(images, rows, np.asarray(ds.targets))
        ds.transform = rest
        if rest_strong is not None:
            ds.strong_transform = rest_strong
        summary["datasets"][name] = {"images": len(rows), "shape": list(images.shape[1:])}
    if plans:
        logger.info(
            "cache_images: %d images decoded once (%.2f GB%s): %s",
            summary["unique_images"],
            summary["bytes"] / 2**30,
            ", shared memory" if any(g["images"].is_shared() for g in groups.values()) else "",
            ", ".join(f"{n} {d['images']} x {'x'.join(map(str, d['shape']))}" for n, d in summary["datasets"].items()),
        )
    return summary


__all__ = ["CachedSample", "attach_image_cache", "split_transform"]
