"""Does the GPU wait for the loader? Loader-fed steps per second against synthetic-batch steps per second.

For each data path (``--augment none``: USB's PIL transforms in the DataLoader workers;
``cuda`` / ``cpu``: ``augment_device``, workers only collate uint8 images and the views are made
as batched tensor operations on that device), builds the algorithm as ``train.py`` does on a
synthetic CUB replica (JPEGs the size of CUB's), then times

* ``synthetic``: training steps on one batch, made once and reused (the step alone);
* ``views``: making one step's views from a collated raw batch (``augment_device`` paths only);
* ``fed``: training steps reading every batch from the loaders (workers, collation, host-to-device
  copy, views), as ``PluginMixin.train`` does.

``fed_over_synthetic`` near 1 means the step is compute-bound; well below 1 means the GPU waits
for data. Weights are randomly initialised (timing only). Prints one JSON document.

    PYTHONPATH=. python benchmarks/bench_feed.py --device cuda --net clip_vit_b16 --img-size 224 \\
        --batch-size 32 --workers 8 --amp-dtype bf16 --augment none,cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

logger = logging.getLogger("bench_feed")


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="cfsg_clip")
    p.add_argument("--net", default="clip_tiny")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument(
        "--batch-size", type=int, default=4, help="labeled batch (the unlabeled batch is the same, uratio 1)"
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="labeled loader workers (the unlabeled loader gets twice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp-dtype", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--augment", default="none,cpu", help="comma-separated data paths: none, cpu, cuda")
    p.add_argument("--cache", choices=("true", "false"), default="true", help="cache_images for every path")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _fed_batches(algorithm: Any):
    """Endless (labeled, unlabeled) batches from the algorithm's loaders, restarted at each epoch's end."""
    epoch = 0
    while True:
        lb, ulb = algorithm.loader_dict["train_lb"], algorithm.loader_dict["train_ulb"]
        for loader in (lb, ulb):
            loader.sampler.set_epoch(epoch)
        yield from zip(lb, ulb)
        epoch += 1


def measure_path(augment: str, a: argparse.Namespace, data_dir: str) -> Dict[str, Any]:
    """Synthetic, views and loader-fed timings of one data path."""
    import torch

    torch.set_num_threads(a.threads)
    extra: Dict[str, Any] = {
        "amp": a.amp_dtype != "none",
        "augment_device": augment,
        "cache_images": a.cache == "true",
        "num_workers": a.workers,
        "persistent_workers": True,
        "num_train_iter": 10 * (a.steps + a.warmup),
    }
    if a.amp_dtype != "none":
        extra["amp_dtype"] = a.amp_dtype
    with common.temp_dir("bench_feed_") as tmp:
        algorithm, dev = common.build(a.algorithm, a.net, a.img_size, a.batch_size, a.device, data_dir, tmp, extra)
        feed = _fed_batches(algorithm)
        data_lb, data_ulb = next(feed)
        raw = {**data_lb, **data_ulb}
        batch = algorithm.process_batch(**raw)
        for _ in range(a.warmup):
            common.train_step(algorithm, batch)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            common.train_step(algorithm, batch)
        _sync(dev)
        synthetic_s = (time.perf_counter() - t0) / a.steps
        out: Dict[str, Any] = {"augment_device": augment, "synthetic_step_s": synthetic_s}
        if augment != "none":
            algorithm.process_batch(**raw)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                algorithm.process_batch(**raw)
            _sync(dev)
            out["views_s_per_step"] = (time.perf_counter() - t0) / a.steps
        for _ in range(a.warmup):
            data_lb, data_ulb = next(feed)
            common.train_step(algorithm, algorithm.process_batch(**data_lb, **data_ulb))
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            data_lb, data_ulb = next(feed)
            common.train_step(algorithm, algorithm.process_batch(**data_lb, **data_ulb))
        _sync(dev)
        fed_s = (time.perf_counter() - t0) / a.steps
        del feed
    out.update(
        fed_step_s=fed_s,
        synthetic_steps_per_s=1.0 / synthetic_s,
        fed_steps_per_s=1.0 / fed_s,
        fed_over_synthetic=synthetic_s / fed_s,
        images_per_step=3 * a.batch_size,
    )
    return out


def run(a: argparse.Namespace) -> Dict[str, Any]:
    """Every requested data path on one replica; errors are recorded per path, never dropped."""
    paths = [p.strip() for p in a.augment.split(",") if p.strip()]
    bad = [p for p in paths if p not in ("none", "cpu", "cuda")]
    if bad:
        raise SystemExit(f"--augment: unknown {bad}; choose from none, cpu, cuda")
    doc: Dict[str, Any] = {
        "algorithm": a.algorithm,
        "net": a.net,
        "img_size": a.img_size,
        "batch_size": a.batch_size,
        "workers": a.workers,
        "cache_images": a.cache == "true",
        "amp_dtype": a.amp_dtype,
        "cpu_count": os.cpu_count(),
        "paths": [],
    }
    with common.temp_dir("bench_feed_data_") as tmp:
        data = common.write_replica(
            tmp,
            num_classes=a.classes,
            per_class_train=a.per_class - 2,
            per_class_test=2,
            image_size=(a.width, a.height),
        )
        for path in paths:
            try:
                doc["paths"].append(measure_path(path, a, data))
            except Exception as exc:  # recorded in the JSON: one failing path must not hide the others
                doc["paths"].append({"augment_device": path, "error": f"{type(exc).__name__}: {exc}"[:1000]})
    return doc


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(json.dumps(run(parse())))
