"""Train-step time and memory of cfsg_clip vs USB's fixmatch, same net, data and batch.

Each algorithm runs in its own process: build it on a synthetic CUB replica (images resized to
``--img_size``), run warm-up steps, then time ``--steps`` full training steps (``train_step`` +
USB's ParamUpdateHook: forward, backward, optimizer). The two algorithms alternate for
``--rounds`` rounds (machine noise hits both) and the medians over all timed steps are compared.
Memory is the peak resident set size during the steps (warm-up included) minus the size before
the first step (sampled every 5 ms), i.e. the training step's working memory on CPU; on CUDA
the peak allocated memory.

    python benchmarks/bench_step.py --net clip_vit_b32 --img_size 224 --batch_size 8 --steps 5 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(alg: str, a: argparse.Namespace, data_dir: str) -> dict:
    import psutil
    import torch

    import usb_cfsg  # noqa: F401
    from semilearn.core.utils import get_net_builder
    from usb_cfsg.config import build_config
    from usb_cfsg.engine.device import resolve_device
    from usb_cfsg.engine.plugin import build_algorithm

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        args = build_config([
            "--algorithm", alg, "--net", a.net, "--pretrained", "none", "--dataset", "cub200", "--data_dir", data_dir,
            "--num_classes", "4", "--num_labels", "16", "--img_size", str(a.img_size), "--batch_size",
            str(a.batch_size), "--uratio", "1", "--num_train_iter", "100", "--num_workers", "0", "--save_dir", tmp,
            "--save_name", alg, "--device", a.device, "--optim", "AdamW", "--lr", "1e-5", "--use_tensorboard",
            "false", "--amp", str(a.amp).lower()])
        device = resolve_device(args.device)
        alg_obj = build_algorithm(args, get_net_builder(args.net, False), None, None, device=device)
        alg_obj.model.to(device), alg_obj.ema_model.to(device)
        alg_obj.call_hook("before_run")
        lb, ulb = iter(alg_obj.loader_dict["train_lb"]), iter(alg_obj.loader_dict["train_ulb"])
        batches = [alg_obj.process_batch(**next(lb), **next(ulb)) for _ in range(a.warmup + a.steps)]

        def step(batch):
            alg_obj.out_dict, alg_obj.log_dict = alg_obj.train_step(**batch)
            alg_obj.call_hook("after_train_step", "ParamUpdateHook")

        proc, peak, stop = psutil.Process(), [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = proc.memory_info().rss  # model, optimizer and data built; no step run yet
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for batch in batches[:a.warmup]:
            step(batch)
        times = []
        for batch in batches[a.warmup:]:
            t0 = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        stop.set()
        sampler.join()
        out = {"algorithm": alg, "step_s_median": sorted(times)[len(times) // 2], "step_s_all": times,
               "peak_rss_delta_mb": (peak[0] - base) / 2 ** 20}
        if device.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="clip_vit_b32")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(measure(a._child, a, a._data)))
        return
    from tests.datasets.replicas import write_cub_replica

    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_cub_replica(tmp, num_classes=4, per_class_train=8, per_class_test=2, quirks=False).parent)
        runs: dict = {"fixmatch": [], "cfsg_clip": []}
        for _ in range(a.rounds):
            for alg in runs:
                cmd = [sys.executable, __file__, *sys.argv[1:], "--_child", alg, "--_data", data]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
                if proc.returncode != 0:
                    sys.exit(proc.stderr[-3000:])
                runs[alg].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = []
    for alg, rs in runs.items():
        times = sorted(t for r in rs for t in r["step_s_all"])
        results.append({"algorithm": alg, "step_s_median": times[len(times) // 2], "step_s_all": times,
                        "peak_rss_delta_mb": sorted(r["peak_rss_delta_mb"] for r in rs)[len(rs) // 2],
                        **({"cuda_peak_mb": max(r["cuda_peak_mb"] for r in rs)} if "cuda_peak_mb" in rs[0] else {})})
    fm, cf = results
    summary = {"net": a.net, "img_size": a.img_size, "batch_size": a.batch_size, "uratio": 1, "device": a.device,
               "threads": a.threads, "rounds": a.rounds, "results": results,
               "time_ratio": cf["step_s_median"] / fm["step_s_median"],
               "memory_ratio": cf["peak_rss_delta_mb"] / max(fm["peak_rss_delta_mb"], 1e-9)}
    print(f"{'algorithm':<10} {'step s (median)':>16} {'step memory MB':>15}")
    for r in results:
        print(f"{r['algorithm']:<10} {r['step_s_median']:>16.3f} {r['peak_rss_delta_mb']:>15.0f}")
    print(f"cfsg_clip / fixmatch: time x{summary['time_ratio']:.2f}, memory x{summary['memory_ratio']:.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
