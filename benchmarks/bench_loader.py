"""Throughput and CPU cost per image of the training loaders, PIL path vs ``augment_device``, with and without the cache.

Builds a synthetic CUB-200-2011 replica (JPEGs the size of real CUB images) in a temporary
folder, builds the USB datasets through ``build_openset_datasets`` and times a torch DataLoader
over the unlabeled set (weak + strong views) and the labeled set (weak view), as a FixMatch-style
training loop reads them (same resumable sampler and per-sample seeding as training), for each of

* ``pil``: USB's PIL transforms in the workers (``augment_device: none``, today's path);
* ``device``: the workers read the resized uint8 image once and collate it (``augment_device:
  cpu|cuda``); the views are made afterwards on the training device, whose CPU cost on the CPU
  path is reported separately (``views_cpu_ms_per_image``, made in this process on 1 thread);

uncached and cached (``cache_images: true``), alternating the order between rounds and reporting
medians. CPU-ms per image = CPU time (user + system) of the workers (reaped after each pass) and of
this process, over the images loaded. The cache's one-off build time is reported separately.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_loader.py

Options: ``--classes 20 --per-class 30 --width 500 --height 375 --img-size 224 --workers 2
--batch-size 32 --images 320 --rounds 2 --cache both|off|on --augment both|pil|device --sets ulb,lb
--json out.json``.
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
    parser.add_argument(
        "--augment",
        choices=("both", "pil", "device"),
        default="both",
        help="pil: USB's PIL transforms in the workers; device: raw uint8 items (augment_device), views made later",
    )
    parser.add_argument("--sets", default="ulb,lb", help="which training sets to time: ulb, lb or both")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def _cpu_seconds() -> Dict[str, float]:
    """CPU seconds (user + system) so far of this process and of its reaped children (the loader's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime}


def _pass(dataset: Any, opts: argparse.Namespace, key: str, batches: int) -> Dict[str, float]:
    """One pass of a training loader of ``batches`` batches: wall time after the first batch, CPU seconds."""
    from usb_cfsg.engine.sampling import train_loader

    loader = train_loader(
        dataset,
        opts.batch_size,
        batches,
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
    elapsed = time.perf_counter() - (start or t_first)
    del loader  # the pass ended: its workers are joined (reaped), so RUSAGE_CHILDREN includes them
    cpu1 = _cpu_seconds()
    return {
        "seen": seen,
        "loaded": loaded,
        "seconds": elapsed,
        "first_batch_s": first_batch_s,
        "workers_s": cpu1["children"] - cpu0["children"],
        "main_s": cpu1["self"] - cpu0["self"],
    }


def _time_loader(dataset: Any, opts: argparse.Namespace, key: str) -> Dict[str, float]:
    """Images per second and CPU-ms per image of a training loader over ``dataset``.

    CPU time is that of the workers (reaped at the end of each pass: ``persistent_workers`` is off,
    so ``RUSAGE_CHILDREN`` has them) plus this process's own (receiving batches). The steady-state
    figure (``cpu_ms_per_image``, what a long run with persistent workers pays) is the difference
    between a long pass and a 2-batch pass, over the difference of their images, so the workers'
    start-up cancels; ``cpu_ms_per_image_with_startup`` is the long pass's total over its images.
    """
    long = _pass(dataset, opts, key, max(1, opts.images // opts.batch_size) + 1)
    short = _pass(dataset, opts, key, 2)
    images = long["loaded"] - short["loaded"]
    workers_s, main_s = long["workers_s"] - short["workers_s"], long["main_s"] - short["main_s"]
    return {
        "images_per_s": long["seen"] / long["seconds"],
        "images": long["seen"],
        "seconds": long["seconds"],
        "first_batch_s": long["first_batch_s"],
        "cpu_ms_per_image": 1000 * (workers_s + main_s) / images,
        "worker_cpu_ms_per_image": 1000 * workers_s / images,
        "main_cpu_ms_per_image": 1000 * main_s / images,
        "cpu_ms_per_image_with_startup": 1000 * (long["workers_s"] + long["main_s"]) / long["loaded"],
        "startup_cpu_s": (short["workers_s"] + short["main_s"]) - 2 * opts.batch_size * (workers_s + main_s) / images,
    }


#: (set, item key read by the timing loop) for each loader timed
_SETS = {
    "ulb": ("train_ulb", {"pil": "x_ulb_w", "device": "x_ulb_raw"}),
    "lb": ("train_lb", {"pil": "x_lb", "device": "x_lb_raw"}),
}


def _build(args: SimpleNamespace, cache: bool, augment: str) -> Dict[str, Any]:
    """The labeled and unlabeled training sets, PIL path or raw uint8 items (``augment_device``), cached or not."""
    from usb_cfsg.datasets import build_openset_datasets
    from usb_cfsg.datasets.batched_views import use_raw_views
    from usb_cfsg.datasets.cache import attach_image_cache

    built = build_openset_datasets(args, "fixmatch", CLIP_MEAN, CLIP_STD, None)[0]
    sets = {"train_lb": built["train_lb"], "train_ulb": built["train_ulb"]}
    if augment == "device":
        use_raw_views(sets, args.img_size, args.crop_ratio)
    out: Dict[str, Any] = {"sets": sets}
    if cache:
        t0 = time.perf_counter()
        out["cache"] = attach_image_cache(sets)
        out["cache_build_s"] = time.perf_counter() - t0
    return out


def _views_cpu_ms(sets: Dict[str, Any], opts: argparse.Namespace, reps: int = 3) -> Dict[str, float]:
    """CPU-ms per image of the batched views made in this process on the CPU (``augment_device: cpu``), 1 thread."""
    import torch

    from usb_cfsg.datasets.batched_views import BatchedViews

    ds = sets["train_ulb"]
    raw = torch.stack([ds[i]["x_ulb_raw"] for i in range(min(opts.batch_size, len(ds)))])
    views = BatchedViews(opts.img_size, CLIP_MEAN, CLIP_STD)
    out = {}
    for kind in ("weak", "strong"):
        make = getattr(views, kind)
        make(raw, views.generator(0))  # warm-up
        t0 = time.process_time()
        for r in range(reps):
            make(raw, views.generator(r + 1))
        out[kind] = 1000 * (time.process_time() - t0) / (reps * raw.shape[0])
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opts = parse_args(argv)
    import torch

    from usb_cfsg.datasets import build_openset_datasets, load_rgb

    torch.set_num_threads(1)
    caches = {"both": (False, True), "off": (False,), "on": (True,)}[opts.cache]
    augments = {"both": ("pil", "device"), "pil": ("pil",), "device": ("device",)}[opts.augment]
    sets = [s.strip() for s in opts.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in _SETS]
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {sorted(_SETS)}")
    rounds: Dict[str, List[Dict[str, float]]] = {}
    results: Dict[str, Any] = {
        "workers": opts.workers,
        "batch_size": opts.batch_size,
        "img_size": opts.img_size,
        "source_size": [opts.width, opts.height],
        "cpu_count": os.cpu_count(),
        "rounds": opts.rounds,
    }
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
        results["unlabeled_images"] = len(plain)
        t0 = time.perf_counter()
        n_decode = min(100, len(plain))
        for i in range(n_decode):
            load_rgb(plain.data[i])
        results["decode_only_images_per_s_1proc"] = n_decode / (time.perf_counter() - t0)

        built = {(c, a): _build(args, c, a) for c in caches for a in augments}
        for (c, a), b in built.items():
            if c:
                results[f"cache_build_s_{a}"] = b["cache_build_s"]
                results["cache_bytes"] = b["cache"]["bytes"]
        if "device" in augments:
            results["views_cpu_ms_per_image"] = _views_cpu_ms(built[(caches[0], "device")]["sets"], opts)
        combos = [(st, c, a) for st in sets for c in caches for a in augments]
        for r in range(opts.rounds):
            for st, c, a in combos if r % 2 == 0 else combos[::-1]:
                name, keys = _SETS[st]
                key = f"{st}_{'cached' if c else 'uncached'}_{a}"
                rounds.setdefault(key, []).append(_time_loader(built[(c, a)]["sets"][name], opts, keys[a]))
    for key, rs in rounds.items():
        rates = [x["images_per_s"] for x in rs]
        cpu = [x["cpu_ms_per_image"] for x in rs]
        results[key] = {
            "images_per_s": common.median(rates),
            "images_per_s_all": rates,
            "spread": common.spread(rates),
            "cpu_ms_per_image": common.median(cpu),
            "cpu_ms_per_image_all": cpu,
            "worker_cpu_ms_per_image": common.median([x["worker_cpu_ms_per_image"] for x in rs]),
            "main_cpu_ms_per_image": common.median([x["main_cpu_ms_per_image"] for x in rs]),
            "cpu_ms_per_image_with_startup": common.median([x["cpu_ms_per_image_with_startup"] for x in rs]),
            "startup_cpu_s": common.median([x["startup_cpu_s"] for x in rs]),
        }
        logger.info(
            "%-20s %6.1f images/s (spread %+.0f%%/%+.0f%%), %6.2f CPU-ms/image steady (workers %.2f, main %.2f); "
            "%.2f with start-up",
            key,
            results[key]["images_per_s"],
            100 * results[key]["spread"][0],
            100 * results[key]["spread"][1],
            results[key]["cpu_ms_per_image"],
            results[key]["worker_cpu_ms_per_image"],
            results[key]["main_cpu_ms_per_image"],
            results[key]["cpu_ms_per_image_with_startup"],
        )
    # the figures earlier versions reported (unlabeled set, PIL path)
    for mode in ("uncached", "cached"):
        if f"ulb_{mode}_pil" in results:
            results[f"{mode}_images_per_s"] = results[f"ulb_{mode}_pil"]["images_per_s"]
    if "uncached_images_per_s" in results:
        results["images_per_s"] = results["uncached_images_per_s"]
    if "cached_images_per_s" in results and "uncached_images_per_s" in results:
        results["cache_speedup"] = results["cached_images_per_s"] / results["uncached_images_per_s"]
    if "ulb_uncached_pil" in results and "ulb_cached_device" in results:
        results["ulb_cpu_ms_reduction"] = (
            results["ulb_uncached_pil"]["cpu_ms_per_image"] / results["ulb_cached_device"]["cpu_ms_per_image"]
        )
    if "views_cpu_ms_per_image" in results:
        v = results["views_cpu_ms_per_image"]
        logger.info(
            "batched views on the CPU (augment_device: cpu, 1 thread): weak %.2f, strong %.2f CPU-ms/image",
            v["weak"],
            v["strong"],
        )
    logger.info("decode only (load_rgb, 1 process): %.1f images/s", results["decode_only_images_per_s_1proc"])
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("usb_cfsg").setLevel(logging.WARNING)
    main()
