"""Train-step time and memory of cfsg_clip vs USB's fixmatch, same net, data and batch.

Each algorithm runs in its own process: build it on a synthetic CUB replica (images resized to
``--img_size``, random-init weights: timing only), run warm-up steps, then time ``--steps`` full
training steps (``train_step`` + USB's ParamUpdateHook: forward, backward, optimizer). The two
algorithms alternate for ``--rounds`` rounds (machine noise hits both) and the medians over all
timed steps are compared; the spread (min and max over the median) is the noise figure.
Memory is the peak resident set size during the steps (warm-up included) minus the size before
the first step (sampled every 5 ms), i.e. the training step's working memory on CPU; on CUDA
the peak allocated memory during the steps. ``--flops`` also counts the FLOPs of one step
(forward + backward) with ``torch.utils.flop_counter``.

    python benchmarks/bench_step.py --net clip_vit_b32 --img_size 224 --batch_size 8 --steps 5 --rounds 2
    python benchmarks/bench_step.py --net clip_vit_b16 --device cuda --batch_size 32 --amp_dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

ALGORITHMS = ("fixmatch", "cfsg_clip")


def count_step_flops(algorithm, batch: Dict[str, Any]) -> int:
    """FLOPs of one training step (forward, losses, backward; the optimizer is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**batch)
        algorithm.out_dict["loss"].backward()
    algorithm.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure(alg: str, a: argparse.Namespace, data_dir: str) -> Dict[str, Any]:
    """Build ``alg`` and time its steps in this process (the child side)."""
    import psutil
    import torch

    torch.set_num_threads(a.threads)
    extra: Dict[str, Any] = {"amp": a.amp_dtype != "none"}
    if a.amp_dtype != "none":
        extra["amp_dtype"] = a.amp_dtype
    if a.compile and a.compile_backend == "inductor":
        extra["compile"] = True
    if alg == "cfsg_clip":
        extra.update(common.parse_sets(a.set))
    with common.temp_dir("bench_step_") as tmp:
        algorithm, dev = common.build(alg, a.net, a.img_size, a.batch_size, a.device, data_dir, tmp, extra)
        if a.compile and a.compile_backend != "inductor":
            from usb_cfsg.engine.device import compile_model

            algorithm.compiled = compile_model(algorithm.model, backend=a.compile_backend)
        batches = common.batches(algorithm, a.warmup + a.steps)
        flops = None
        if a.flops:  # counted eagerly (compiled modules run their eager forward meanwhile): the same math
            wrappers = getattr(algorithm, "compiled", None) or []
            for w in wrappers:
                w.failed = "bypassed while counting FLOPs"
            flops = count_step_flops(algorithm, batches[0])
            for w in wrappers:
                w.failed = None
        proc, peak, stop = psutil.Process(), [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = proc.memory_info().rss  # model, optimizer and data built; no step run yet
        base_cuda = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_warm = time.perf_counter()
        for batch in batches[: a.warmup]:
            common.train_step(algorithm, batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t_warm
        times, cpu_times = [], []
        for batch in batches[a.warmup :]:
            t0, c0 = time.perf_counter(), time.process_time()
            common.train_step(algorithm, batch)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        stop.set()
        sampler.join()
        images = a.batch_size * (1 + 2 * 1)  # labeled + weak and strong unlabeled views (uratio 1)
        out: Dict[str, Any] = {
            "algorithm": alg,
            "step_s_median": common.median(times),
            "step_s_all": times,
            "step_cpu_s_median": common.median(cpu_times),
            "step_cpu_s_all": cpu_times,
            "warmup_s": warmup_s,
            "images_per_step": images,
            "images_per_s": images / common.median(times),
            "peak_rss_delta_mb": (peak[0] - base) / 2**20,
        }
        if flops is not None:
            out["flops_per_step"] = flops
            out["tflops_per_s"] = flops / common.median(times) / 1e12
        if dev.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_step_peak_delta_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
            out["device_name"] = torch.cuda.get_device_name(dev)
        if getattr(algorithm, "compiled", None):
            out["compile_failed"] = sorted({w.failed for w in algorithm.compiled if w.failed})
        return out


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="clip_vit_b32")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="same as --amp_dtype auto")
    p.add_argument("--amp_dtype", default="none", choices=("none", "auto", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="compile: true")
    p.add_argument("--compile_backend", default="inductor", help=argparse.SUPPRESS)
    p.add_argument("--flops", action="store_true", help="count the FLOPs of one step")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a cfsg_clip config key for this comparison, e.g. --set ova_views=weak_strong",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.amp and a.amp_dtype == "none":
        a.amp_dtype = "auto"
    return a


def run(a: argparse.Namespace, argv: List[str]) -> Dict[str, Any]:
    """Alternate child processes of each algorithm for ``a.rounds`` rounds; summarise."""
    algorithms = a.algorithms.split(",")
    with common.temp_dir("bench_step_data_") as tmp:
        data = common.write_replica(tmp)
        runs: Dict[str, List[Dict[str, Any]]] = {alg: [] for alg in algorithms}
        for _ in range(a.rounds):
            for alg in algorithms:
                cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_child", alg, "--_data", data]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=a.timeout, env=dict(os.environ, PYTHONPATH=common.ROOT)
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"{alg} failed:\n{proc.stderr[-3000:]}")
                runs[alg].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = []
    for alg, rs in runs.items():
        times = sorted(t for r in rs for t in r["step_s_all"])
        cpu = sorted(t for r in rs for t in r["step_cpu_s_all"])
        entry = {
            "algorithm": alg,
            "step_s_median": common.median(times),
            "step_s_all": times,
            "step_s_spread": common.spread(times),
            "step_cpu_s_median": common.median(cpu),
            "step_cpu_s_all": cpu,
            "step_cpu_s_spread": common.spread(cpu),
            "images_per_s": rs[0]["images_per_step"] / common.median(times),
            "peak_rss_delta_mb": common.median([r["peak_rss_delta_mb"] for r in rs]),
            "peak_rss_delta_mb_all": [r["peak_rss_delta_mb"] for r in rs],
            "warmup_s": [r["warmup_s"] for r in rs],
        }
        for key in ("cuda_peak_mb", "cuda_step_peak_delta_mb", "flops_per_step", "device_name", "compile_failed"):
            if key in rs[0]:
                entry[key] = (
                    rs[0][key]
                    if key in ("flops_per_step", "device_name")
                    else (
                        max(r[key] for r in rs) if key != "compile_failed" else sorted({f for r in rs for f in r[key]})
                    )
                )
        if "flops_per_step" in entry:
            entry["tflops_per_s"] = entry["flops_per_step"] / entry["step_s_median"] / 1e12
        results.append(entry)
    summary: Dict[str, Any] = {
        "net": a.net,
        "img_size": a.img_size,
        "batch_size": a.batch_size,
        "uratio": 1,
        "device": a.device,
        "threads": a.threads,
        "rounds": a.rounds,
        "steps": a.steps,
        "amp_dtype": a.amp_dtype,
        "compile": a.compile,
        "cfsg_keys": common.parse_sets(a.set),
        "weights": "random init (timing only)",
        "results": results,
    }
    by = {r["algorithm"]: r for r in results}
    if "fixmatch" in by and "cfsg_clip" in by:
        fm, cf = by["fixmatch"], by["cfsg_clip"]
        summary["time_ratio"] = cf["step_s_median"] / fm["step_s_median"]
        # process CPU seconds (all threads): robust to other processes sharing the cores, unlike wall time
        summary["cpu_time_ratio"] = cf["step_cpu_s_median"] / fm["step_cpu_s_median"]
        mem = "cuda_step_peak_delta_mb" if "cuda_step_peak_delta_mb" in fm else "peak_rss_delta_mb"
        summary["memory_ratio"] = cf[mem] / max(fm[mem], 1e-9)
        summary["memory_measure"] = mem
        if "flops_per_step" in fm and "flops_per_step" in cf:
            summary["flops_ratio"] = cf["flops_per_step"] / fm["flops_per_step"]
    return summary


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse(argv)
    if a._child:
        print(json.dumps(measure(a._child, a, a._data)))
        return {}
    clean = []  # the children get the same options minus --json
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--json":
            skip = True
            continue
        clean.append(tok)
    summary = run(a, clean)
    print(
        f"{'algorithm':<10} {'step s (median)':>16} {'spread':>14} {'CPU s (median)':>15} {'spread':>14} "
        f"{'step memory MB':>15}"
    )
    for r in summary["results"]:
        lo, hi = r["step_s_spread"]
        clo, chi = r["step_cpu_s_spread"]
        print(
            f"{r['algorithm']:<10} {r['step_s_median']:>16.3f} {lo:>+6.0%}/{hi:<+6.0%} "
            f"{r['step_cpu_s_median']:>15.3f} {clo:>+6.0%}/{chi:<+6.0%} "
            f"{r.get('cuda_step_peak_delta_mb', r['peak_rss_delta_mb']):>15.0f}"
        )
    if "time_ratio" in summary:
        print(
            f"cfsg_clip / fixmatch: time x{summary['time_ratio']:.2f} (CPU time x{summary['cpu_time_ratio']:.2f}), "
            f"memory x{summary['memory_ratio']:.2f}"
            + (f", FLOPs x{summary['flops_ratio']:.2f}" if "flops_ratio" in summary else "")
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return summary


if __name__ == "__main__":
    main()
