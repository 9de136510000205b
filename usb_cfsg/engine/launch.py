"""Run a training job: checks, run folder, logging, seeding, processes, device placement, resume.

Replaces USB's ``main``/``main_worker`` (train.py in the USB repository), which are GPU-only.
Processes: one (default); ``world_size`` local processes with ``multiprocessing_distributed: true``
(spawned here, gloo on CPU, NCCL on CUDA); or any number under ``torchrun``, detected from its
environment variables. ``batch_size`` is per process.

What a start does, in this order (decisions documented here and in README 'Runs and resume'):

1. :func:`preflight`: everything cheap that can fail is checked before any folder is touched,
   data read or model built: the net name, ``pretrain_path``, the demo CLIP build the run uses
   (``demo_clip_sha256``, :mod:`usb_cfsg.engine.provenance`), and on resume the checkpoint's
   format, algorithm and configuration (:func:`check_resume`). A resume of a finished run trains
   nothing and writes nothing (its results stay as they are).
2. :class:`RunFolder`: the run folder is created. An existing one is continued under ``resume``,
   replaced under ``overwrite`` (moved aside, and deleted only once the new run has started, so a
   failed start restores it; refused when the run would load something from inside it) and an
   error otherwise. A folder holding only what a start writes (the leftover of a killed start) is
   reused.
3. Building datasets, model, optimizer and loading the checkpoint. Any failure up to here
   removes the folder this start created (or restores the replaced one): a failed start leaves no
   new run folder behind.
4. The resolved configuration is logged, and training starts.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import sys
from argparse import Namespace
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from ..config import config_to_dict, format_config, save_config
from ..console import python_command
from ..errors import CheckpointError, ConfigError, did_you_mean
from .checkpoint import peek_checkpoint
from .device import resolve_device
from .plugin import CHECKPOINT_FORMAT, build_algorithm, loader_workers
from .provenance import record_demo_clip

logger = logging.getLogger("usb_cfsg")
_FORMAT = "[%(asctime)s %(levelname)s] %(message)s"

#: Keys that may differ between a checkpoint's configuration and the run resuming it: where things
#: are, how often to log/evaluate, how to launch and load. Every other key shapes training; a
#: difference is refused (see :func:`check_resume`).
RESUME_FREE_KEYS = frozenset(
    {
        "save_dir",
        "save_name",
        "resume",
        "resume_extend",
        "load_path",
        "overwrite",
        "use_tensorboard",
        "use_wandb",
        "use_aim",
        "num_log_iter",
        "num_eval_iter",
        "eval_batch_size",
        "num_workers",
        "data_dir",
        "download",
        "device",
        "gpu",
        "rank",
        "multiprocessing_distributed",
        "dist_url",
        "dist_backend",
        "relevance_dir",
        "eval_subset",
        "threshold_rule",
        "threshold_tpr",
        "max_bad_steps",
        "pretrain_path",
        "demo_clip_sha256",
        "persistent_workers",
        "pin_memory",
        "cache_images",
        "cache_budget_gb",
        "compile",
        "channels_last",
    }
)
#: Keys that change the length of the lr schedule; they may change on resume under ``resume_extend``.
SCHEDULE_KEYS = ("num_train_iter", "epoch")


def run_dir(args: Namespace) -> str:
    """``<save_dir>/<save_name>``."""
    return os.path.join(args.save_dir, args.save_name)


def setup_logging(path: Optional[str], level: int = logging.INFO) -> logging.Logger:
    """Log to the console and, when ``path`` is given, to ``path``/log.txt."""
    root = logging.getLogger("usb_cfsg")
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_usb_cfsg", False):
            root.removeHandler(h)
            h.close()
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
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
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cap_num_workers(args: Namespace, notify: bool = True) -> None:
    """Cap ``num_workers`` to the CPUs this process may use, with one notice when ``notify`` (the
    unlabeled loader, which uses twice as many, is capped the same way by ``plugin.loader_workers``)."""
    cpus = loader_workers(10**6)
    wanted = int(args.num_workers)
    if wanted <= cpus and 2 * wanted <= cpus:
        return
    args.num_workers = min(wanted, cpus)
    if notify:
        logger.info(
            "num_workers %d: %d CPUs available, using %d workers for the labeled and evaluation loaders "
            "and %d for the unlabeled loader (2 x num_workers, capped)",
            wanted,
            cpus,
            args.num_workers,
            min(2 * wanted, cpus),
        )


def _same(a: object, b: str) -> bool:
    return os.path.abspath(os.path.expanduser(str(a))) == os.path.abspath(os.path.expanduser(b))


def _inside(child: Optional[str], parent: str) -> bool:
    if not child:
        return False
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent + os.sep)


#: What a run writes before its first checkpoint; a folder holding only these is from a killed start.
_START_FILES = {"config.yaml", "log.txt", "split.json", "tensorboard"}


class RunFolder:
    """The run folder of one start, and how to undo it if the start fails.

    Attributes:
        path: ``<save_dir>/<save_name>``.
        created: This start created the folder (it did not exist, or replaced a previous one).
        backup: Where the replaced previous run waits until the new run has started.
    """

    def __init__(self, path: str, created: bool, backup: Optional[str] = None) -> None:
        self.path, self.created, self.backup = path, created, backup
        self.is_started = False

    @classmethod
    def prepare(cls, args: Namespace) -> RunFolder:
        """Create the run folder (see the module docstring, step 2).

        Raises:
            ConfigError: the folder exists without ``overwrite``/``resume``, or ``overwrite`` would
                remove something this run loads.
        """
        path = run_dir(args)
        if not os.path.isdir(path):
            os.makedirs(path)
            return cls(path, created=True)
        if args.resume:
            return cls(path, created=False)
        if set(os.listdir(path)) <= _START_FILES:  # left over by a start that was killed
            shutil.rmtree(path)
            os.makedirs(path)
            return cls(path, created=True)
        if not args.overwrite:
            raise ConfigError(
                f"run folder {path!r} already exists: pass --overwrite true to replace it, "
                f"--resume true to continue it from its latest_model.pth, "
                f"or another --save_name"
            )
        for key in ("pretrain_path", "data_dir"):
            value = getattr(args, key, None)
            if _inside(value, path):
                raise ConfigError(
                    f"overwrite would delete {key} {value!r}, which this run loads, with the run folder "
                    f"{path!r}: move it elsewhere or choose another --save_name"
                )
        backup = os.path.join(
            os.path.dirname(os.path.abspath(path)), f".{os.path.basename(os.path.abspath(path))}.replaced-{os.getpid()}"
        )
        os.rename(path, backup)
        os.makedirs(path)
        logger.info("overwrite: replacing %s (the previous run is deleted once this one has started)", path)
        return cls(path, created=True, backup=backup)

    def started(self) -> None:
        """The run has started training: the replaced previous run is deleted now."""
        self.is_started = True
        if self.backup and os.path.isdir(self.backup):
            shutil.rmtree(self.backup, ignore_errors=True)
        self.backup = None

    def abort(self) -> None:
        """A start failed: remove what it created and bring back the replaced run (no-op once started)."""
        if self.is_started:
            return
        setup_logging(None)  # release log.txt
        if self.created and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        if self.backup and os.path.isdir(self.backup):
            os.rename(self.backup, self.path)
            self.backup = None


def prepare_run_dir(args: Namespace) -> str:
    """Create the run folder (kept for callers of the earlier API); see :class:`RunFolder`."""
    return RunFolder.prepare(args).path


def check_net(args: Namespace) -> None:
    """The net name exists (semilearn.nets, or torchvision with ``net_from_name``)."""
    if args.net_from_name:
        import torchvision.models as tv

        names = [n for n, v in tv.__dict__.items() if n.islower() and not n.startswith("_") and callable(v)]
    else:
        import semilearn.nets as nets

        names = [n for n in dir(nets) if not n.startswith("_")]
    if args.net not in names:
        raise ConfigError(
            f"unknown net {args.net!r}{did_you_mean(args.net, names)} (net_from_name: "
            f"{args.net_from_name}); see README 'Configuration' for the nets"
        )


def check_resume(args: Namespace, ckpt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Decide whether ``args`` may resume from the checkpoint summarised in ``ckpt`` (see peek_checkpoint).

    Decisions (honest resume):

    * the checkpoint's algorithm and format must be this run's;
    * every key outside :data:`RESUME_FREE_KEYS` must equal the checkpoint's; a difference is
      refused, listing each changed key with both values;
    * ``num_train_iter``/``epoch`` (:data:`SCHEDULE_KEYS`) may change only with
      ``resume_extend: true``: the lr schedule is then recomputed for the new length (logged at
      resume); the new ``num_train_iter`` must be above the checkpoint's iteration;
    * a checkpoint already at ``num_train_iter`` is a finished run: nothing to train.

    Returns:
        ``None`` when the run is finished, else ``{"it": checkpoint iteration, "old": {key: value}}``
        with the schedule keys that change (empty when none).

    Raises:
        CheckpointError: wrong format or algorithm.
        ConfigError: a refused change.
    """
    path = args.load_path
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path!r} has format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if ckpt.get("algorithm") not in (None, args.algorithm):
        raise CheckpointError(
            f"{path!r} was written by algorithm {ckpt.get('algorithm')!r}; this run is "
            f"{args.algorithm!r}: resume with --algorithm {ckpt.get('algorithm')}"
        )
    old_cfg = dict(ckpt.get("config") or {})
    new_cfg = config_to_dict(args)
    it = int(ckpt["it"])
    changed = {
        k: (old_cfg[k], new_cfg[k])
        for k in sorted(set(old_cfg) & set(new_cfg))
        if k not in RESUME_FREE_KEYS and old_cfg[k] != new_cfg[k]
    }
    schedule = {k: v for k, v in changed.items() if k in SCHEDULE_KEYS}
    other = {k: v for k, v in changed.items() if k not in SCHEDULE_KEYS}
    folder = os.path.dirname(os.path.abspath(path))
    if other:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in other.items())
        raise ConfigError(
            f"resume from {path!r}: this run changes keys that shape training ({listed}); a resume "
            f"continues the checkpoint's run as it was configured. Resume with its own config "
            f"({python_command()} --c {os.path.join(folder, 'config.yaml')} --resume true), or start a "
            f"new run with another --save_name"
        )
    if schedule and not args.resume_extend:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in schedule.items())
        raise ConfigError(
            f"resume from {path!r} (iteration {it}) changes the schedule ({listed}): the lr schedule "
            f"and the epoch length follow num_train_iter, so the resumed run would not be the run that "
            f"was started. Add --resume_extend true to continue with the schedule recomputed for the "
            f"new length, or resume with num_train_iter {old_cfg.get('num_train_iter')!r}"
        )
    if it >= args.num_train_iter:
        if schedule:
            raise ConfigError(
                f"resume from {path!r}: the checkpoint is already at iteration {it}; num_train_iter "
                f"{args.num_train_iter} would train nothing. Give a num_train_iter above {it}"
            )
        return None
    return {"it": it, "old": {k: a for k, (a, _) in schedule.items()}}


def preflight(args: Namespace) -> bool:
    """Checks before any folder, data or model (module docstring, step 1).

    Sets ``args.resume_info`` (a runtime attribute, not a config key) for a resume.

    Returns:
        False when there is nothing to do (resume of a finished run), else True.
    """
    check_net(args)
    if args.pretrain_path and not os.path.isfile(args.pretrain_path):
        raise ConfigError(
            f"pretrain_path {args.pretrain_path!r} does not exist (absolute: "
            f"{os.path.abspath(args.pretrain_path)!r}); give a local weights file, or pretrain_path none"
        )
    args.resume_info = None
    if not args.resume:
        record_demo_clip(args)  # the demo CLIP build the run uses, into config.yaml and openset_metrics.json
        return True
    if not os.path.isfile(str(args.load_path)):
        own = os.path.join(str(args.save_dir), str(args.save_name), "latest_model.pth")
        where = "this run's folder has none" if _same(args.load_path, own) else f"this run's own would be {own!r}"
        raise ConfigError(
            f"--resume true: no checkpoint at {args.load_path!r} ({where}); drop --resume (or give --resume "
            f"false) to start the run fresh, or give --load_path PATH to continue from another run's checkpoint"
        )
    ckpt = peek_checkpoint(args.load_path, required=("format", "it"))
    info = check_resume(args, ckpt)
    record_demo_clip(args, dict(ckpt.get("config") or {}))  # the run continues its checkpoint's build
    if info is None:
        logger.info(
            "%s is a finished run (iteration %d of num_train_iter %d): nothing to train; its folder and "
            "results are left as they are. To train longer: --num_train_iter N --resume_extend true",
            args.load_path,
            int(ckpt["it"]),
            args.num_train_iter,
        )
        return False
    args.resume_info = info
    return True


def place_model(model: torch.nn.Module, device: torch.device, distributed: bool) -> torch.nn.Module:
    """Move a net to ``device``; wrap it in DistributedDataParallel when distributed."""
    model = model.to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=True,
        )
    return model


def _torchrun_env() -> Optional[Dict[str, int]]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        return {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return None


def main(args: Namespace) -> Dict[str, Any]:
    """Entry point of train.py: check, prepare the run folder, train in one or several processes.

    Returns:
        The results dict of the (rank 0) run; empty when processes were spawned or nothing was to do.
    """
    env = _torchrun_env()
    if env is not None:
        args.world_size, args.rank = env["WORLD_SIZE"], env["RANK"]
        args.dist_url = "env://"
    cap_num_workers(args, notify=args.rank == 0)
    if not preflight(args):
        return {}
    if env is not None:
        folder = RunFolder.prepare(args) if args.rank == 0 else None
        try:
            return worker(env["LOCAL_RANK"], args, folder.started if folder is not None else None)
        except BaseException:
            if folder is not None:
                folder.abort()
            raise
    if args.world_size > 1 and not args.multiprocessing_distributed:
        raise ConfigError(f"world_size={args.world_size} needs multiprocessing_distributed: true, or torchrun")
    folder = RunFolder.prepare(args)
    try:
        if args.multiprocessing_distributed and args.world_size > 1:
            import torch.multiprocessing as mp

            args.dist_url = args.dist_url or f"tcp://127.0.0.1:{free_port()}"
            started = mp.get_context("spawn").Event()
            try:
                mp.spawn(worker, nprocs=args.world_size, args=(args, started), join=True)
            finally:
                if started.is_set():
                    folder.started()
            return {}
        return worker(args.gpu or 0, args, folder.started)
    except BaseException:
        folder.abort()
        raise


def worker(local_rank: int, args: Namespace, started: Union[None, Callable[[], None], Any] = None) -> Dict[str, Any]:
    """One training process (USB's main_worker, on any device).

    Args:
        local_rank: Process index on this machine.
        args: The resolved configuration.
        started: Called (a function) or set (an Event) by rank 0 when training begins.
    """
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
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank)
        log.info("process %d/%d on %s (%s)", args.rank, args.world_size, device, backend)
    try:
        return _train(args, device, path, log, started if args.rank == 0 else None)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _signal(started: Any) -> None:
    if started is None:
        return
    if hasattr(started, "set"):
        started.set()
    else:
        started()


def apply_schedule_change(algorithm: Any, info: Dict[str, Any], log: logging.Logger) -> None:
    """``resume_extend``: log what changes and move the lr to the new schedule at the resumed iteration.

    USB's cosine schedule is a LambdaLR of ``num_train_iter``; its state (the step count) comes
    from the checkpoint and its shape from this run's config, so after loading, the lr of the
    current step is recomputed from the new shape.
    """
    args, sched = algorithm.args, algorithm.scheduler
    changes = ", ".join(f"{k} {v!r} -> {getattr(args, k)!r}" for k, v in info["old"].items())
    old_lr = float(algorithm.optimizer.param_groups[-1]["lr"])
    new_lr = old_lr
    if sched is not None and hasattr(sched, "lr_lambdas"):
        step = int(sched.last_epoch)
        for group, base, fn in zip(algorithm.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(step)
        sched._last_lr = [g["lr"] for g in algorithm.optimizer.param_groups]
        new_lr = float(algorithm.optimizer.param_groups[-1]["lr"])
    log.warning(
        "resume_extend: %s; the lr schedule is recomputed for %d iterations: after iteration %d the lr goes "
        "from %.3e (old schedule) to %.3e (new); iterations per epoch: %d",
        changes,
        args.num_train_iter,
        info["it"],
        old_lr,
        new_lr,
        algorithm.num_iter_per_epoch,
    )


def _train(
    args: Namespace, device: torch.device, path: str, log: logging.Logger, started: Any = None
) -> Dict[str, Any]:
    from semilearn.core.utils import get_net_builder

    from .tblog import open_tb_log

    seed_everything(args.seed)
    info = getattr(args, "resume_info", None)
    # on resume, the steps logged after the checkpoint are dropped before they are logged again
    resume_step = int(info["it"]) if args.resume and info else None
    tb_log = open_tb_log(path, args.use_tensorboard, resume_step) if args.rank == 0 else None
    try:
        net_builder = get_net_builder(args.net, args.net_from_name)
        algorithm = build_algorithm(args, net_builder, tb_log, log, device=device)
        algorithm.model = place_model(algorithm.model, device, args.distributed)
        algorithm.ema_model = place_model(algorithm.ema_model, device, args.distributed)
        if args.resume:
            algorithm.load_model(args.load_path)
            if info and info["old"]:
                apply_schedule_change(algorithm, info, log)
        if args.rank == 0:
            n_train = sum(p.numel() for p in algorithm.model.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in algorithm.model.parameters())
            log.info(
                "resolved config, keys that differ from the defaults (every key: %s):\n%s",
                os.path.join(str(args.save_dir), str(args.save_name), "config.yaml"),
                format_config(args),
            )
            log.info(
                "device: %s, world size %d; trainable parameters: %d of %d", device, args.world_size, n_train, n_all
            )
            config_path = os.path.join(path, "config.yaml")
            # config.yaml holds the run's configuration, written once the start has succeeded: at a
            # fresh start, and on resume only when missing (a new folder) or resume_extend changed it
            if not args.resume or not os.path.isfile(config_path) or (info and info["old"]):
                save_config(args, config_path)
        _signal(started)
        if hasattr(algorithm, "warmup"):  # USB's train.py runs these stages (e.g. Dash's warm-up)
            log.info("warmup stage")
            algorithm.warmup()
        log.info(
            "training %s for %d iterations%s",
            args.algorithm,
            args.num_train_iter,
            f" (from iteration {algorithm.it + 1}, after the checkpoint's {algorithm.it})" if args.resume else "",
        )
        algorithm.train()
        if hasattr(algorithm, "finetune"):
            log.info("finetune stage")
            algorithm.finetune()
        results = dict(getattr(algorithm, "results_dict", {}) or {})
        for key, value in results.items():  # 4 digits: the summary table above has the full figures
            log.info("result %s: %s", key, f"{value:.4g}" if isinstance(value, float) else value)
        return results
    finally:
        if tb_log is not None and getattr(tb_log, "writer", None) is not None:
            tb_log.writer.close()
