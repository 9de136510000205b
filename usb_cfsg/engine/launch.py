"""Run a training job: run folder, logging, seeding, processes, device placement, resume.

Replaces USB's ``main``/``main_worker`` (train.py in the USB repository), which are GPU-only.
Processes: one (default); ``world_size`` local processes with ``multiprocessing_distributed: true``
(spawned here, gloo on CPU, NCCL on CUDA); or any number under ``torchrun``, detected from its
environment variables. ``batch_size`` is per process.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import sys
from argparse import Namespace
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..config import format_config, save_config
from ..errors import ConfigError
from .device import resolve_device
from .plugin import build_algorithm

logger = logging.getLogger("usb_cfsg")
_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"


def run_dir(args: Namespace) -> str:
    return os.path.join(args.save_dir, args.save_name)


def setup_logging(path: Optional[str], level: int = logging.INFO) -> logging.Logger:
    """Log to the console and, when ``path`` is given, to ``path``/log.txt."""
    root = logging.getLogger("usb_cfsg")
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_usb_cfsg", False):
            root.removeHandler(h)
            h.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        os.makedirs(path, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(path, "log.txt")))
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h._usb_cfsg = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False
    return root


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What a run writes before its first checkpoint; a folder holding only these is from a failed start.
_START_FILES = {"config.yaml", "log.txt", "split.json", "tensorboard"}


def prepare_run_dir(args: Namespace) -> str:
    """Create the run folder; an existing one needs ``overwrite`` or ``resume`` (nothing is lost silently).

    A folder holding only what a run writes before its first checkpoint (a start that failed, e.g.
    on missing data) is reused without asking.
    """
    path = run_dir(args)
    if os.path.isdir(path) and not set(os.listdir(path)) <= _START_FILES and not args.resume:
        if not args.overwrite:
            raise ConfigError(f"run folder {path!r} already exists: pass --overwrite true to replace it, "
                              f"--resume true --load_path {os.path.join(path, 'latest_model.pth')} to continue, "
                              f"or another --save_name")
        load = os.path.abspath(args.load_path) if args.load_path else None
        if load and load.startswith(os.path.abspath(path) + os.sep):
            raise ConfigError(f"overwrite would delete {args.load_path!r}, which this run loads")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    return path


def place_model(model: torch.nn.Module, device: torch.device, distributed: bool) -> torch.nn.Module:
    """Move a net to ``device``; wrap it in DistributedDataParallel when distributed."""
    model = model.to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=True)
    return model


def _torchrun_env() -> Optional[Dict[str, int]]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        return {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return None


def main(args: Namespace) -> Dict[str, Any]:
    """Entry point of train.py: prepare the run folder, then train in one or several processes.

    Returns:
        The results dict of the (rank 0) run; empty when processes were spawned.
    """
    env = _torchrun_env()
    if env is not None:
        args.world_size, args.rank = env["WORLD_SIZE"], env["RANK"]
        args.dist_url = "env://"
        if args.rank == 0:
            prepare_run_dir(args)
        return worker(env["LOCAL_RANK"], args)
    prepare_run_dir(args)
    if args.multiprocessing_distributed and args.world_size > 1:
        import torch.multiprocessing as mp

        args.dist_url = args.dist_url or f"tcp://127.0.0.1:{free_port()}"
        mp.spawn(worker, nprocs=args.world_size, args=(args,), join=True)
        return {}
    if args.world_size > 1:
        raise ConfigError(f"world_size={args.world_size} needs multiprocessing_distributed: true, or torchrun")
    return worker(args.gpu or 0, args)


def worker(local_rank: int, args: Namespace) -> Dict[str, Any]:
    """One training process (USB's main_worker, on any device)."""
    args = Namespace(**vars(args))
    distributed = args.world_size > 1
    if args.multiprocessing_distributed and _torchrun_env() is None:
        args.rank = local_rank
    args.distributed = distributed
    device = resolve_device(args.device, local_rank if (distributed or args.gpu is not None) else None)
    args.gpu = device.index if device.type == "cuda" else None
    path = run_dir(args)
    log = setup_logging(path if args.rank == 0 else None, logging.INFO if args.rank == 0 else logging.WARNING)
    if distributed:
        backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size,
                                rank=args.rank)
        log.info("process %d/%d on %s (%s)", args.rank, args.world_size, device, backend)
    try:
        return _train(args, device, path, log)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: Namespace, device: torch.device, path: str, log: logging.Logger) -> Dict[str, Any]:
    from semilearn.core.utils import TBLog, get_net_builder

    seed_everything(args.seed)
    if args.rank == 0:
        save_config(args, os.path.join(path, "config.yaml"))
        log.info("resolved config:\n%s", format_config(args))
        log.info("device: %s, world size %d", device, args.world_size)
    tb_log = TBLog(path, "tensorboard", use_tensorboard=args.use_tensorboard) if args.rank == 0 else None
    net_builder = get_net_builder(args.net, args.net_from_name)
    algorithm = build_algorithm(args, net_builder, tb_log, log, device=device)
    n_train = sum(p.numel() for p in algorithm.model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in algorithm.model.parameters())
    log.info("trainable parameters: %d of %d", n_train, n_all)
    algorithm.model = place_model(algorithm.model, device, args.distributed)
    algorithm.ema_model = place_model(algorithm.ema_model, device, args.distributed)
    if args.resume:
        algorithm.load_model(args.load_path)
    if hasattr(algorithm, "warmup"):  # USB's train.py runs these stages (e.g. Dash's warm-up)
        log.info("warmup stage")
        algorithm.warmup()
    log.info("training %s for %d iterations", args.algorithm, args.num_train_iter)
    algorithm.train()
    if hasattr(algorithm, "finetune"):
        log.info("finetune stage")
        algorithm.finetune()
    results = dict(getattr(algorithm, "results_dict", {}) or {})
    for key, value in results.items():
        log.info("result %s: %s", key, value)
    if tb_log is not None and getattr(tb_log, "writer", None) is not None:
        tb_log.writer.flush()
    return results
