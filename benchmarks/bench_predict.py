"""Prediction throughput: the CFSG network (all branches, every unknown score) vs the plain CLIP encoder.

Both run on the same images and the same vision tower (the plain encoder is the CFSG net's own
open_clip ``VisionTransformer``, i.e. ``CLIP.encode_image`` without normalisation), in eval mode
under ``torch.inference_mode``. They alternate, one batch each, for ``--rounds`` rounds after a
warm-up, so machine noise hits both alike; images/s is the median over rounds.
``throughput_ratio`` = CFSG images/s / plain images/s (1.0 = CFSG costs nothing extra).
Weights are randomly initialised: the cost of a forward pass does not depend on their values.

    python benchmarks/bench_predict.py --net clip_vit_b32 --img_size 224 [--device cuda] --json F
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple:
    """(wall seconds, process CPU seconds of all threads) of one call."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def run(a: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from usb_cfsg.engine.device import autocast_factory, resolve_device, synchronize
    from usb_cfsg.nets.clip import CLIP_ARCHS, build_clip_net

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    arch = CLIP_ARCHS.get(a.net, a.net)
    net = (
        build_clip_net(
            arch,
            a.num_classes,
            None,
            head="cfsg",
            img_size=a.img_size,
            class_names=[f"bird species {i}" for i in range(a.num_classes)],
            zs_weight=a.zs_weight,
            zs_mode=a.zs_mode,
        )
        .to(dev)
        .eval()
    )
    net = net.for_prediction()  # zs_mode weights: the WiSE-FT merge, as eval.py and predict.py predict
    visual = net.backbone.visual
    if a.compile:
        from usb_cfsg.engine.device import compile_model

        compile_model(net)
        visual_fn: Callable = torch.compile(visual)
    else:
        visual_fn = visual
    amp = autocast_factory(dev, a.amp != "none", "auto" if a.amp == "none" else a.amp)
    images = torch.randn(a.batch_size, 3, a.img_size, a.img_size, device=dev)
    outputs: Dict[str, Any] = {}

    def cfsg() -> None:
        with torch.inference_mode(), amp():
            outputs["cfsg"] = net(images)

    def plain() -> None:
        with torch.inference_mode(), amp():
            outputs["plain"] = visual_fn(images)

    sync = lambda: synchronize(dev)  # noqa: E731
    for _ in range(a.warmup):
        cfsg()
        plain()
    times: Dict[str, List[float]] = {"cfsg": [], "plain": []}
    cpu: Dict[str, List[float]] = {"cfsg": [], "plain": []}
    for r in range(a.rounds):
        order = (("cfsg", cfsg), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("cfsg", cfsg))
        for name, fn in order:
            wall, cpu_s = _timed(fn, sync)
            times[name].append(wall)
            cpu[name].append(cpu_s)
    rates = {k: [a.batch_size / t for t in v] for k, v in times.items()}
    cpu_rates = {k: [a.batch_size / t for t in v] for k, v in cpu.items()}
    scores = sorted(k for k in outputs["cfsg"] if k.startswith("score_"))
    result = {
        "net": a.net,
        "zs_weight": a.zs_weight,
        "zs_mode": a.zs_mode,
        "img_size": a.img_size,
        "batch_size": a.batch_size,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "amp": a.amp,
        "compile": a.compile,
        "rounds": a.rounds,
        "num_classes": a.num_classes,
        "weights": "random init (timing only; not a pretrained CLIP)",
        "cfsg_outputs": sorted(outputs["cfsg"]),
        "cfsg_scores": scores,
        "cfsg_images_per_s": common.median(rates["cfsg"]),
        "plain_images_per_s": common.median(rates["plain"]),
        "cfsg_images_per_s_all": rates["cfsg"],
        "plain_images_per_s_all": rates["plain"],
        "cfsg_spread": common.spread(rates["cfsg"]),
        "plain_spread": common.spread(rates["plain"]),
    }
    ratios = [c / p for c, p in zip(rates["cfsg"], rates["plain"])]
    result["throughput_ratio"] = result["cfsg_images_per_s"] / result["plain_images_per_s"]
    result["throughput_ratio_per_round"] = ratios
    if dev.type == "cpu":  # images per process-CPU-second: robust to other processes sharing the cores
        result["cfsg_images_per_cpu_s"] = common.median(cpu_rates["cfsg"])
        result["plain_images_per_cpu_s"] = common.median(cpu_rates["plain"])
        result["cpu_throughput_ratio"] = result["cfsg_images_per_cpu_s"] / result["plain_images_per_cpu_s"]
        result["cpu_spread"] = {k: common.spread(v) for k, v in cpu_rates.items()}
    if dev.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def parse(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="clip_vit_b32", help="clip_vit_b16 | clip_vit_b32 | clip_vit_l14 | clip_tiny")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_classes", type=int, default=100, help="K seen classes (CUB: 100)")
    p.add_argument(
        "--zs_weight",
        type=float,
        default=0.5,
        help="cfsg_clip's zs_weight (its default 0.5 runs the frozen zero-shot copy of the tuned blocks too; 0: not)",
    )
    p.add_argument(
        "--zs_mode",
        default="output",
        choices=("output", "weights"),
        help="output: the frozen zero-shot copy runs beside the net; weights: the merged net (no extra forward)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile both (as compile: true does)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    a = parse(argv)
    result = run(a)
    print(
        f"{a.net} {a.img_size}px batch {a.batch_size} on {result['device']}: "
        f"CFSG {result['cfsg_images_per_s']:.1f} images/s (spread {result['cfsg_spread'][0]:+.0%}/"
        f"{result['cfsg_spread'][1]:+.0%}), plain CLIP encoder {result['plain_images_per_s']:.1f} images/s "
        f"(spread {result['plain_spread'][0]:+.0%}/{result['plain_spread'][1]:+.0%}); "
        f"throughput ratio {result['throughput_ratio']:.2f}"
        + (f" (per CPU second: {result['cpu_throughput_ratio']:.2f})" if "cpu_throughput_ratio" in result else ""),
        flush=True,
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
