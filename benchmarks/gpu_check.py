"""One prepared GPU check: step cost (fixmatch vs cfsg_clip; fp32 / bf16; eager / compiled),
prediction throughput, loader throughput and CPU cost, and whether the GPU waits for the loader
(loader-fed vs synthetic-batch steps per second, PIL path vs ``augment_device: cuda``; bench_feed.py),
written to one JSON within a time budget.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine (< 8 min)
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry.json   # CPU, tiny net: checks that every piece runs

Per training-step variant and algorithm: median step time, images/s (labeled + 2 unlabeled views),
peak CUDA memory, FLOPs per step (forward + backward, ``torch.utils.flop_counter``, counted on one
eager step: compiled modules run the same math) and the fraction of the GPU's dense bf16 peak that the step reaches.
Each algorithm runs all its variants in one child process (one import, one CUDA context); the
JSON is rewritten after every piece, so a run cut short keeps what it measured. Variants that no
longer fit the budget are recorded as skipped, never silently dropped. Weights are randomly
initialised (timing only).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, from the vendors' datasheets; the first
#: matching substring of torch.cuda.get_device_name() wins (order matters: "L40S" before "L4").
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)

#: (name, amp_dtype, compile), in the order they run: cheap ones first
VARIANTS = (
    ("fp32", "none", False),
    ("bf16", "bf16", False),
    ("bf16+compile", "bf16", True),
    ("fp32+compile", "none", True),
)


def bf16_peak(device_name: str) -> Optional[float]:
    """The dense bf16 peak (TFLOP/s) of a GPU by name, or None when unknown (pass --peak_tflops)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def _settings(dry: bool) -> SimpleNamespace:
    if dry:
        return SimpleNamespace(
            net="clip_tiny",
            img_size=64,
            batch_size=4,
            steps=2,
            warmup=1,
            device="cpu",
            compile_backend="eager",
            threads=1,
            predict_batch=4,
            predict_rounds=2,
            feed=["--net", "clip_tiny", "--img-size", "64", "--batch-size", "4", "--steps", "2", "--warmup", "1"]
            + ["--workers", "1", "--augment", "none,cpu", "--classes", "4", "--per-class", "6"],
            feed_timeout=300,
            loader=[
                "--classes",
                "4",
                "--per-class",
                "8",
                "--images",
                "16",
                "--batch-size",
                "4",
                "--rounds",
                "1",
                "--workers",
                "1",
            ],
        )
    workers = str(min(8, os.cpu_count() or 1))
    return SimpleNamespace(
        net="clip_vit_b16",
        img_size=224,
        batch_size=32,
        steps=10,
        warmup=3,
        device="cuda",
        compile_backend="inductor",
        threads=min(8, os.cpu_count() or 1),
        predict_batch=64,
        predict_rounds=6,
        feed=["--net", "clip_vit_b16", "--img-size", "224", "--batch-size", "32", "--steps", "15", "--warmup", "3"]
        + ["--workers", workers, "--device", "cuda", "--amp-dtype", "bf16", "--augment", "none,cuda"]
        + ["--classes", "40", "--per-class", "30", "--threads", workers],
        feed_timeout=150,
        loader=[
            "--classes",
            "40",
            "--per-class",
            "30",
            "--images",
            "1024",
            "--batch-size",
            "64",
            "--rounds",
            "2",
            "--workers",
            workers,
        ],
    )


# ------------------------------------------------------------------- child side
def child_steps(alg: str, s: SimpleNamespace, data_dir: str, deadline: float, variants: List[str]) -> None:
    """Run the step variants of one algorithm; print one JSON line per variant."""
    import bench_step
    import torch

    for name, amp_dtype, compiled in VARIANTS:
        if name not in variants:
            continue
        # a compiled variant needs room for compilation; an eager one for a few steps
        need = 150 if compiled and s.device == "cuda" else 20
        if time.time() + need > deadline:
            print(json.dumps({"algorithm": alg, "variant": name, "skipped": "time budget"}), flush=True)
            continue
        a = bench_step.parse(
            [
                "--net",
                s.net,
                "--img_size",
                str(s.img_size),
                "--batch_size",
                str(s.batch_size),
                "--steps",
                str(s.steps),
                "--warmup",
                str(s.warmup + (2 if compiled else 0)),
                "--threads",
                str(s.threads),
                "--device",
                s.device,
                "--amp_dtype",
                amp_dtype,
                "--compile_backend",
                s.compile_backend,
                "--flops",
            ]
            + (["--compile"] if compiled else [])
        )
        a.compile = compiled
        t0 = time.time()
        try:
            out = bench_step.measure(alg, a, data_dir)
        except Exception as exc:
            out = {"algorithm": alg, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
        out.update(variant=name, amp_dtype=amp_dtype, compile=compiled, wall_s=time.time() - t0)
        print(json.dumps(out), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ driver side
class Report:
    """The JSON document, rewritten after every piece."""

    def __init__(self, path: str, doc: Dict[str, Any]) -> None:
        self.path, self.doc = path, doc

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.doc, fh, indent=1)
        os.replace(tmp, self.path)


def _env(dry: bool, peak_override: Optional[float]) -> Dict[str, Any]:
    import torch

    env: Dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "dry_run": dry,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=name,
            capability=list(torch.cuda.get_device_capability(0)),
            memory_gb=props.total_memory / 2**30,
            bf16_supported=torch.cuda.is_bf16_supported(),
            bf16_peak_tflops=peak_override or bf16_peak(name),
            bf16_peak_source="--peak_tflops" if peak_override else "vendor datasheet, dense",
        )
    else:
        env.update(device_name=platform.processor() or "cpu", bf16_peak_tflops=peak_override)
    return env


def run_steps(report: Report, s: SimpleNamespace, deadline: float, variants: List[str]) -> None:
    doc = report.doc
    doc["step"] = {
        "net": s.net,
        "img_size": s.img_size,
        "batch_size": s.batch_size,
        "uratio": 1,
        "images_per_step": 3 * s.batch_size,
        "steps": s.steps,
        "results": [],
    }
    peak = doc["env"].get("bf16_peak_tflops")
    with common.temp_dir("gpu_check_") as tmp:
        data = common.write_replica(tmp)
        algorithms = ("fixmatch", "cfsg_clip")
        for i, alg in enumerate(algorithms):
            # share what is left fairly: fixmatch must leave cfsg_clip its half
            left = deadline - time.time()
            alg_deadline = time.time() + left / (len(algorithms) - i)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--_child",
                alg,
                "--_data",
                data,
                "--_deadline",
                str(alg_deadline),
                "--_variants",
                ",".join(variants),
            ] + (["--dry-run"] if doc["env"]["dry_run"] else [])
            try:
                proc = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=max(30.0, left),
                    env=dict(os.environ, PYTHONPATH=common.ROOT),
                )
                lines, err = proc.stdout, proc.stderr if proc.returncode else ""
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                lines, err = out, "timed out"
            for line in lines.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    if peak and "tflops_per_s" in row:
                        row["fraction_of_bf16_peak"] = row["tflops_per_s"] / peak
                    doc["step"]["results"].append(row)
            if err:
                doc["step"].setdefault("errors", {})[alg] = err[-3000:]
            report.save()
    by = {(r["algorithm"], r.get("variant")): r for r in doc["step"]["results"]}
    ratios = {}
    for name, _, _ in VARIANTS:
        fm, cf = by.get(("fixmatch", name), {}), by.get(("cfsg_clip", name), {})
        if "step_s_median" in fm and "step_s_median" in cf:
            mem = "cuda_step_peak_delta_mb" if "cuda_step_peak_delta_mb" in fm else "peak_rss_delta_mb"
            ratios[name] = {
                "time_ratio": cf["step_s_median"] / fm["step_s_median"],
                "memory_ratio": cf[mem] / max(fm[mem], 1e-9),
                "memory_measure": mem,
            }
    doc["step"]["cfsg_over_fixmatch"] = ratios
    report.save()


def run_predict(report: Report, s: SimpleNamespace) -> None:
    import bench_predict

    rows = []
    for amp in ("none", "bf16"):
        argv = [
            "--net",
            s.net,
            "--img_size",
            str(s.img_size),
            "--batch_size",
            str(s.predict_batch),
            "--rounds",
            str(s.predict_rounds),
            "--device",
            s.device,
            "--amp",
            amp,
            "--threads",
            str(s.threads),
        ]
        try:
            rows.append(bench_predict.run(bench_predict.parse(argv)))
        except Exception as exc:
            rows.append({"amp": amp, "error": f"{type(exc).__name__}: {exc}"})
        report.doc["predict"] = rows
        report.save()


def run_loader(report: Report, s: SimpleNamespace) -> None:
    import bench_loader

    try:
        report.doc["loader"] = bench_loader.main(s.loader)
    except Exception as exc:
        report.doc["loader"] = {"error": f"{type(exc).__name__}: {exc}"}
    report.save()


def run_feed(report: Report, s: SimpleNamespace) -> None:
    """Loader-fed vs synthetic-batch steps per second, PIL path vs augment_device (bench_feed.py, a child process)."""
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_feed.py")] + s.feed
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=s.feed_timeout, env=dict(os.environ, PYTHONPATH=common.ROOT)
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if lines:
            report.doc["feed"] = json.loads(lines[-1])
        else:
            report.doc["feed"] = {"error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    except subprocess.TimeoutExpired:
        report.doc["feed"] = {"error": f"timed out after {s.feed_timeout} s"}
    report.save()


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny net and sizes: check that every piece runs")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for everything (default 450 = 7.5 min)")
    p.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_variants", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    s = _settings(a.dry_run)
    if a._child:
        child_steps(a._child, s, a._data, a._deadline, a._variants.split(","))
        return {}
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --dry-run to check the pieces on CPU")
    start = time.time()
    report = Report(
        a.out, {"env": _env(a.dry_run, a.peak_tflops), "budget_s": a.budget, "weights": "random init (timing only)"}
    )
    report.save()
    # loader and prediction are quick; the step variants get the rest of the budget
    run_loader(report, s)
    run_feed(report, s)
    run_predict(report, s)
    run_steps(report, s, start + a.budget - 5, a.variants.split(","))
    report.doc["wall_s"] = time.time() - start
    report.save()
    print(json.dumps(summary(report.doc), indent=1))
    return report.doc


def summary(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The headline figures of a gpu_check JSON."""
    out: Dict[str, Any] = {"device": doc["env"].get("device_name"), "wall_s": round(doc.get("wall_s", 0), 1)}
    for row in doc.get("step", {}).get("results", []):
        key = f"{row['algorithm']}/{row.get('variant')}"
        if "images_per_s" in row:
            out[key] = {
                "images_per_s": round(row["images_per_s"], 1),
                "peak_mb": round(row.get("cuda_peak_mb", row.get("peak_rss_delta_mb", 0))),
                "fraction_of_bf16_peak": round(row["fraction_of_bf16_peak"], 3)
                if "fraction_of_bf16_peak" in row
                else None,
            }
        else:
            out[key] = row.get("skipped") or row.get("error")
    out["cfsg_over_fixmatch"] = doc.get("step", {}).get("cfsg_over_fixmatch")
    for row in doc.get("predict", []):
        if "throughput_ratio" in row:
            out[f"predict/{row['amp']}"] = {
                "cfsg_images_per_s": round(row["cfsg_images_per_s"], 1),
                "plain_images_per_s": round(row["plain_images_per_s"], 1),
                "throughput_ratio": round(row["throughput_ratio"], 3),
            }
    for row in doc.get("feed", {}).get("paths", []):
        out[f"feed/{row['augment_device']}"] = (
            {k: round(row[k], 3) for k in ("synthetic_steps_per_s", "fed_steps_per_s", "fed_over_synthetic")}
            if "fed_over_synthetic" in row
            else row.get("error")
        )
    loader = doc.get("loader", {})
    if "cache_speedup" in loader:
        out["loader"] = {
            k: round(loader[k], 2) for k in ("uncached_images_per_s", "cached_images_per_s", "cache_speedup")
        }
        for key, row in loader.items():
            if key.startswith(("ulb_", "lb_")) and isinstance(row, dict) and "cpu_ms_per_image" in row:
                out["loader"][f"{key}_cpu_ms_per_image"] = round(row["cpu_ms_per_image"], 2)
    return out


if __name__ == "__main__":
    main()
