"""Where the time of a training step goes: cfsg_clip vs fixmatch, with torch.profiler.

Each part of the network's forward (frozen trunk, tuned blocks, projection, value-path dense
features, SFM, VSI, heads, unknown scores) is wrapped in a ``record_function`` label by patching
the methods of the built model instance (the library code is not changed); the backward pass and
the optimizer are labelled as a whole. The table lists, per label, the mean CPU (and CUDA) time
per step over the profiled steps, and the top operators.

    python benchmarks/profile_step.py --net clip_vit_b32 --img_size 224 --batch_size 8 --steps 2 \
        --json docs/profile_step_vitb32_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

#: (attribute path on the unwrapped model, label); missing attributes are skipped
PARTS = (
    ("backbone.trunk", "frozen trunk"),
    ("backbone.tuned", "tuned blocks (fwd)"),
    ("backbone.tuned_until_last", "tuned blocks but the last (fwd)"),
    ("backbone.last_block_state", "last block: ln_1, keys, values"),
    ("backbone.last_block_queries", "last block: used tokens only"),
    ("backbone.state_value_features", "value-path dense features"),
    ("backbone.state_dense_features", "dense features (sfm_dense / glmcm_local)"),
    ("zero_shot.logits", "zero-shot prior (frozen copy, no grad)"),
    ("backbone.project", "ln_post + proj"),
    ("backbone.value_features", "value-path dense features"),
    ("backbone.dense_features", "value-path dense features"),
    ("sfm", "SFM"),
    ("vsi", "VSI cues"),
    ("coarse_head", "coarse head"),
    ("fine_head", "fine head"),
    ("classifier", "classifier head"),
    ("ova", "OVA head"),
    ("text", "text embeddings"),
)
SCORE_FUNCS = ("ova_unknown_score", "mcm_score", "glmcm_score")


def _wrap(fn: Callable, label: str) -> Callable:
    import torch

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return inner


def instrument(model: Any) -> None:
    """Wrap the network's parts (see PARTS) in record_function labels, on this instance only."""
    import torch.nn as nn

    from usb_cfsg.nets.backbone import unwrap

    net = unwrap(model)
    for path, label in PARTS:
        owner, _, name = path.rpartition(".")
        obj = net
        for part in filter(None, owner.split(".")):
            obj = getattr(obj, part, None)
        target = getattr(obj, name, None) if obj is not None else None
        if target is None:
            continue
        if isinstance(target, nn.Module):
            target.forward = _wrap(target.forward, label)
        else:
            setattr(obj, name, _wrap(target, label))
    mod = sys.modules.get(type(net).__module__)
    for fname in SCORE_FUNCS:
        if mod is not None and hasattr(mod, fname):
            setattr(mod, fname, _wrap(getattr(mod, fname), "unknown scores (no grad)"))


def profile(alg: str, a: argparse.Namespace, data_dir: str, save_dir: str) -> Dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as tprofile

    torch.set_num_threads(a.threads)
    algorithm, dev = common.build(
        alg,
        a.net,
        a.img_size,
        a.batch_size,
        a.device,
        data_dir,
        save_dir,
        common.parse_sets(a.set) if alg == "cfsg_clip" else None,
    )
    instrument(algorithm.model)
    data = common.batches(algorithm, a.warmup + a.steps)

    def step(batch: Dict[str, Any]) -> None:
        with record_function("forward + losses"):
            algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**batch)
        with record_function("backward + optimizer"):
            algorithm.call_hook("after_train_step", "ParamUpdateHook")

    for batch in data[: a.warmup]:
        step(batch)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        for batch in data[a.warmup :]:
            with record_function("step"):
                step(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    labels = {label for _, label in PARTS} | {
        "unknown scores (no grad)",
        "forward + losses",
        "backward + optimizer",
        "step",
    }
    rows, ops = [], []
    for ev in prof.key_averages():
        entry = {
            "name": ev.key,
            "calls_per_step": ev.count / a.steps,
            "cpu_total_ms_per_step": ev.cpu_time_total / 1e3 / a.steps,
            "self_cpu_ms_per_step": ev.self_cpu_time_total / 1e3 / a.steps,
        }
        if dev.type == "cuda":
            entry["device_total_ms_per_step"] = getattr(ev, "device_time_total", ev.cuda_time_total) / 1e3 / a.steps
        (rows if ev.key in labels else ops).append(entry)
    rows.sort(key=lambda r: -r["cpu_total_ms_per_step"])
    ops.sort(key=lambda r: -r["self_cpu_ms_per_step"])
    return {"algorithm": alg, "regions": rows, "top_ops": ops[:25]}


def render(result: Dict[str, Any]) -> List[str]:
    lines = [f"== {result['algorithm']} (ms per step, CPU time incl. children)"]
    for r in result["regions"]:
        lines.append(f"  {r['name']:<28} {r['cpu_total_ms_per_step']:>9.1f}  x{r['calls_per_step']:.0f}")
    lines.append("  top operators (self CPU ms per step):")
    for r in result["top_ops"][:12]:
        lines.append(f"    {r['name']:<40} {r['self_cpu_ms_per_step']:>9.1f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="clip_vit_b32")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--algorithms", default="fixmatch,cfsg_clip")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a cfsg_clip config key, e.g. --set ova_views=weak_strong",
    )
    p.add_argument("--json", default=None)
    a = p.parse_args()
    results = []
    with common.temp_dir("profile_step_") as tmp:
        data_dir = common.write_replica(tmp)
        for alg in a.algorithms.split(","):
            results.append(profile(alg, a, data_dir, os.path.join(tmp, "runs")))
            print("\n".join(render(results[-1])), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "net": a.net,
                    "img_size": a.img_size,
                    "batch_size": a.batch_size,
                    "device": a.device,
                    "cfsg_keys": common.parse_sets(a.set),
                    "threads": a.threads,
                    "steps": a.steps,
                    "weights": "random init (timing only)",
                    "results": results,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
