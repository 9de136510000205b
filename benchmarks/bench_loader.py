"""Throughput of the unlabeled-data loader (decode + weak + strong augmentation), CPU only.

Builds a synthetic CUB-200-2011 replica (JPEGs the size of real CUB images) in a temporary
folder, builds the USB datasets through ``build_openset_datasets`` and times a torch DataLoader
over the unlabeled set, as a FixMatch-style training loop reads it.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_loader.py

Options: ``--classes 20 --per-class 30 --width 500 --height 375 --img-size 224 --workers 2
--batch-size 32 --images 320 --json out.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from tests.datasets.replicas import write_cub_replica  # noqa: E402
from usb_cfsg.datasets import build_openset_datasets, load_rgb  # noqa: E402

logger = logging.getLogger("bench_loader")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=30, help="images per class (5 of them go to test)")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=320, help="images to time, after one warm-up batch")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    return parser.parse_args()


def main() -> dict:
    opts = parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        t0 = time.perf_counter()
        write_cub_replica(tmp, num_classes=opts.classes, per_class_train=opts.per_class - 5, per_class_test=5,
                          image_size=(opts.width, opts.height))
        logger.info("wrote %d JPEGs of %dx%d in %.1f s", opts.classes * opts.per_class, opts.width, opts.height,
                    time.perf_counter() - t0)
        args = SimpleNamespace(dataset="cub200", data_dir=tmp, num_classes=opts.classes // 2,
                               num_labels=opts.classes // 2, include_lb_to_ulb=True, img_size=opts.img_size,
                               crop_ratio=0.875, seed=0)
        dsets, _ = build_openset_datasets(args, "fixmatch", CLIP_MEAN, CLIP_STD, None)
        ulb = dsets["train_ulb"]

        t0 = time.perf_counter()
        n_decode = min(100, len(ulb))
        for i in range(n_decode):
            load_rgb(ulb.data[i])
        decode_rate = n_decode / (time.perf_counter() - t0)

        loader = DataLoader(ulb, batch_size=opts.batch_size, shuffle=True, num_workers=opts.workers,
                            drop_last=True, persistent_workers=opts.workers > 0,
                            generator=torch.Generator().manual_seed(0))
        batches_wanted = max(1, opts.images // opts.batch_size)
        seen, timed_batches, start = 0, 0, None
        while timed_batches < batches_wanted:
            for batch in loader:
                if start is None:  # the first batch pays for worker start-up
                    start = time.perf_counter()
                    continue
                seen += batch["x_ulb_w"].shape[0]
                timed_batches += 1
                if timed_batches >= batches_wanted:
                    break
        elapsed = time.perf_counter() - start
    results = {
        "images_per_s": seen / elapsed,
        "images": seen,
        "seconds": elapsed,
        "decode_only_images_per_s_1proc": decode_rate,
        "workers": opts.workers,
        "batch_size": opts.batch_size,
        "img_size": opts.img_size,
        "source_size": [opts.width, opts.height],
        "cpu_count": os.cpu_count(),
    }
    logger.info("unlabeled loader (weak+strong): %.1f images/s (%d images in %.2f s, %d workers, batch %d, %d px)",
                results["images_per_s"], seen, elapsed, opts.workers, opts.batch_size, opts.img_size)
    logger.info("decode only (load_rgb, 1 process): %.1f images/s", decode_rate)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("usb_cfsg").setLevel(logging.WARNING)
    main()
