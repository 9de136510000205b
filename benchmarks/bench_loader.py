"""Throughput of the unlabeled-data loader (decode + weak + strong augmentation), with and without the image cache.

Builds a synthetic CUB-200-2011 replica (JPEGs the size of real CUB images) in a temporary
folder, builds the USB datasets through ``build_openset_datasets`` and times a torch DataLoader
over the unlabeled set, as a FixMatch-style training loop reads it (through the same
resumable sampler and per-sample seeding as training). ``--cache both`` (default) alternates
uncached and cached (``cache_images: true``) rounds and reports the median of each; the cache's
one-off build time is reported separately.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_loader.py

Options: ``--classes 20 --per-class 30 --width 500 --height 375 --img-size 224 --workers 2
--batch-size 32 --images 320 --rounds 2 --cache both|off|on --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

logger = logging.getLogger("bench_loader")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=30, help="images per class (5 of them go to test)")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=320, help="images to time per round, after one warm-up batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", choices=("both", "off", "on"), default="both")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def _cpu_seconds() -> Dict[str, float]:
    """CPU seconds (user + system) so far of this process and of its reaped children (the loader's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime}


def _time_loader(dataset: Any, opts: argparse.Namespace, key: str = "x_ulb_w") -> Dict[str, float]:
    """Images per second and CPU-ms per image of one pass of a training loader over ``dataset``.

    CPU time is that of the workers (reaped at the end of the pass: ``persistent_workers`` is off,
    so ``RUSAGE_CHILDREN`` has them) plus this process's own (receiving batches), over every image
    loaded, the warm-up batch included (its workers' start-up is part of the cost).
    """
    from usb_cfsg.engine.sampling import train_loader

    batches_wanted = max(1, opts.images // opts.batch_size)
    loader = train_loader(
        dataset,
        opts.batch_size,
        batches_wanted + 1,
        seed=0,
        rank=0,
        world_size=1,
        num_workers=opts.workers,
        persistent_workers=False,
    )
    seen, start, loaded = 0, None, 0
    cpu0 = _cpu_seconds()
    t_first = time.perf_counter()
    for batch in loader:
        loaded += batch[key].shape[0]
        if start is None:  # the first batch pays for worker start-up
            start = time.perf_counter()
            first_batch_s = start - t_first
            continue
        seen += batch[key].shape[0]
    elapsed = time.perf_counter() - start
    del loader  # the pass ended: its workers are joined (reaped), so RUSAGE_CHILDREN includes them
    cpu1 = _cpu_seconds()
    workers_s = cpu1["children"] - cpu0["children"]
    main_s = cpu1["self"] - cpu0["self"]
    return {
        "images_per_s": seen / elapsed,
        "images": seen,
        "seconds": elapsed,
        "first_batch_s": first_batch_s,
        "cpu_ms_per_image": 1000 * (workers_s + main_s) / loaded,
        "worker_cpu_ms_per_image": 1000 * workers_s / loaded,
        "main_cpu_ms_per_image": 1000 * main_s / loaded,
    }


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opts = parse_args(argv)
    import torch

    from usb_cfsg.datasets import build_openset_datasets, load_rgb
    from usb_cfsg.datasets.cache import attach_image_cache

    torch.set_num_threads(1)
    with common.temp_dir("bench_loader_") as tmp:
        t0 = time.perf_counter()
        common.write_replica(
            tmp,
            num_classes=opts.classes,
            per_class_train=opts.per_class - 5,
            per_class_test=5,
            image_size=(opts.width, opts.height),
        )
        logger.info(
            "wrote %d JPEGs of %dx%d in %.1f s",
            opts.classes * opts.per_class,
            opts.width,
            opts.height,
            time.perf_counter() - t0,
        )
        args = SimpleNamespace(
            dataset="cub200",
            data_dir=tmp,
            num_classes=opts.classes // 2,
            num_labels=opts.classes // 2,
            include_lb_to_ulb=True,
            img_size=opts.img_size,
            crop_ratio=0.875,
            seed=0,
        )
        plain = build_openset_datasets(args, "fixmatch", CLIP_MEAN, CLIP_STD, None)[0]["train_ulb"]

        t0 = time.perf_counter()
        n_decode = min(100, len(plain))
        for i in range(n_decode):
            load_rgb(plain.data[i])
        decode_rate = n_decode / (time.perf_counter() - t0)

        cached = None
        cache_build_s = None
        if opts.cache in ("both", "on"):
            cached = build_openset_datasets(args, "fixmatch", CLIP_MEAN, CLIP_STD, None)[0]["train_ulb"]
            t0 = time.perf_counter()
            cache_summary = attach_image_cache({"train_ulb": cached})
            cache_build_s = time.perf_counter() - t0
        modes = {"both": ("uncached", "cached"), "off": ("uncached",), "on": ("cached",)}[opts.cache]
        rounds: Dict[str, List[Dict[str, float]]] = {m: [] for m in modes}
        for r in range(opts.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                rounds[mode].append(_time_loader(plain if mode == "uncached" else cached, opts))
    results: Dict[str, Any] = {
        "workers": opts.workers,
        "batch_size": opts.batch_size,
        "img_size": opts.img_size,
        "source_size": [opts.width, opts.height],
        "cpu_count": os.cpu_count(),
        "rounds": opts.rounds,
        "decode_only_images_per_s_1proc": decode_rate,
        "unlabeled_images": len(plain),
    }
    for mode, rs in rounds.items():
        rates = [x["images_per_s"] for x in rs]
        results[f"{mode}_images_per_s"] = common.median(rates)
        results[f"{mode}_images_per_s_all"] = rates
        results[f"{mode}_spread"] = common.spread(rates)
    if "uncached" in rounds:
        results["images_per_s"] = results["uncached_images_per_s"]  # the figure earlier versions reported
    if cached is not None:
        results["cache_build_s"] = cache_build_s
        results["cache_bytes"] = cache_summary["bytes"]
    if "cached" in rounds and "uncached" in rounds:
        results["cache_speedup"] = results["cached_images_per_s"] / results["uncached_images_per_s"]
    for mode in rounds:
        logger.info(
            "unlabeled loader (weak+strong), %s: %.1f images/s (median of %d rounds, spread %+.0f%%/%+.0f%%; "
            "%d workers, batch %d, %d px)",
            mode,
            results[f"{mode}_images_per_s"],
            opts.rounds,
            100 * results[f"{mode}_spread"][0],
            100 * results[f"{mode}_spread"][1],
            opts.workers,
            opts.batch_size,
            opts.img_size,
        )
    if cached is not None:
        logger.info("cache built in %.1f s (%.0f MB)", cache_build_s, cache_summary["bytes"] / 2**20)
    logger.info("decode only (load_rgb, 1 process): %.1f images/s", decode_rate)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("usb_cfsg").setLevel(logging.WARNING)
    main()
