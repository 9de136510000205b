"""Shared set-up of the benchmarks: a real algorithm on a synthetic CUB replica, one train step.

The benchmarks build the algorithm exactly as ``train.py`` does (config, dataset split, loaders,
net, optimizer) with random-init weights, which is fine for timing: the cost of a step does not
depend on the values of the weights. The random weights are written to a file and passed as
``pretrain_path`` (:func:`random_weights_file`), because a zero-shot prior (``zs_weight`` > 0,
cfsg_clip's default) is refused on ``pretrained: none``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def write_replica(
    root: str, num_classes: int = 4, per_class_train: int = 8, per_class_test: int = 2, image_size: Any = 16
) -> str:
    """Write a CUB-200-2011 replica under ``root`` and return the ``data_dir`` to pass."""
    from tests.datasets.replicas import write_cub_replica

    return str(
        write_cub_replica(
            root,
            num_classes=num_classes,
            per_class_train=per_class_train,
            per_class_test=per_class_test,
            image_size=image_size,
            quirks=False,
        ).parent
    )


def bench_argv(
    alg: str,
    net: str,
    img_size: int,
    batch_size: int,
    device: str,
    data_dir: str,
    save_dir: str,
    extra: Optional[Dict[str, Any]] = None,
) -> List[str]:
    """Command-line tokens of a benchmark run (4 seen classes, random init, no TensorBoard)."""
    opts: Dict[str, Any] = dict(
        algorithm=alg,
        net=net,
        pretrained="none",
        dataset="cub200",
        data_dir=data_dir,
        num_classes=4,
        num_labels=16,
        img_size=img_size,
        batch_size=batch_size,
        uratio=1,
        num_train_iter=100,
        num_workers=0,
        save_dir=save_dir,
        save_name=alg,
        device=device,
        optim="AdamW",
        lr=1e-5,
        use_tensorboard="false",
    )
    opts.update(extra or {})
    argv: List[str] = []
    for key, value in opts.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def random_weights_file(net: str, img_size: int, folder: str) -> str:
    """A randomly initialised open_clip state dict of ``net`` at ``img_size``, saved under ``folder`` (timing only)."""
    import torch

    from usb_cfsg.nets.clip import CLIP_ARCHS, create_clip

    path = os.path.join(folder, f"random_init_{net}_{img_size}.pt")
    if not os.path.isfile(path):
        torch.manual_seed(0)
        model, _ = create_clip(CLIP_ARCHS[net], None, None, img_size)
        os.makedirs(folder, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def build(
    alg: str,
    net: str,
    img_size: int,
    batch_size: int,
    device: str,
    data_dir: str,
    save_dir: str,
    extra: Optional[Dict[str, Any]] = None,
):
    """Build the algorithm (model and EMA model on the device, hooks run up to ``before_run``).

    Returns:
        ``(algorithm, torch_device)``.
    """
    from semilearn.core.utils import get_net_builder

    import usb_cfsg  # noqa: F401
    from usb_cfsg.config import build_config
    from usb_cfsg.engine.device import resolve_device
    from usb_cfsg.engine.plugin import build_algorithm

    extra = {"pretrain_path": random_weights_file(net, img_size, save_dir), **(extra or {})}
    args = build_config(bench_argv(alg, net, img_size, batch_size, device, data_dir, save_dir, extra))
    dev = resolve_device(args.device)
    algorithm = build_algorithm(args, get_net_builder(args.net, False), None, None, device=dev, record_split=False)
    algorithm.model.to(dev)
    algorithm.ema_model.to(dev)
    algorithm.call_hook("before_run")
    return algorithm, dev


def batches(algorithm, count: int) -> List[Dict[str, Any]]:
    """``count`` training batches, already on the algorithm's device."""
    lb, ulb = iter(algorithm.loader_dict["train_lb"]), iter(algorithm.loader_dict["train_ulb"])
    out = []
    for _ in range(count):
        try:
            data_lb, data_ulb = next(lb), next(ulb)
        except StopIteration:
            lb, ulb = iter(algorithm.loader_dict["train_lb"]), iter(algorithm.loader_dict["train_ulb"])
            data_lb, data_ulb = next(lb), next(ulb)
        out.append(algorithm.process_batch(**data_lb, **data_ulb))
    return out


def train_step(algorithm, batch: Dict[str, Any]) -> None:
    """One full training step: ``train_step`` (forward + losses) and USB's ParamUpdateHook (backward, optimizer)."""
    algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**batch)
    algorithm.call_hook("after_train_step", "ParamUpdateHook")


def parse_sets(items: Sequence[str]) -> Dict[str, str]:
    """``["ova_views=weak_strong"]`` -> ``{"ova_views": "weak_strong"}`` (values as on the command line)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def median(values: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count)."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median of no values")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def spread(values: Sequence[float]) -> Tuple[float, float]:
    """``(min, max)`` relative to the median, a simple noise figure (e.g. (-0.04, +0.10))."""
    m = median(values)
    return (min(values) / m - 1.0, max(values) / m - 1.0)


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


def config_clip_net(args: Any, info: Any) -> Any:
    """The plain CLIP net (``head="clip"``, no training) of a run config's backbone and weights, in eval mode.

    What the diagnostic benchmarks (dense_alignment, badge_probe) read frozen features from.
    """
    from usb_cfsg.nets import BUILDERS

    return BUILDERS[args.net](
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        pretrained_path=args.pretrain_path,
        head="clip",
        img_size=args.img_size,
        num_tuned_blocks=args.num_tuned_blocks,
        class_names=info.seen_class_names,
        prompt_templates=args.prompt_templates or info.prompt_templates,
        text_encoder=args.text_encoder,
    ).eval()
