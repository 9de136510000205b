"""The one line train.py prints on Ctrl-C: this run's last checkpoint, its iteration, and how to go on.

The run folder's ``latest_model.pth`` is this run's when it was written after this process started,
or when this run resumed from it. Anything else there belongs to an earlier run: under
``overwrite: true`` a start interrupted before its first checkpoint puts the previous run back
(:class:`~usb_cfsg.engine.launch.RunFolder`), and naming its checkpoint as this run's would send the
user to resume a run they replaced.
"""

from __future__ import annotations

import os
import shlex
import time
from argparse import Namespace
from typing import Optional

from .config import _same_path
from .console import python_command

CHECKPOINT = "latest_model.pth"


def checkpoint_iteration(path: str) -> Optional[int]:
    """The iteration a checkpoint was saved at (its ``it``), or None when it cannot be read."""
    try:
        from .engine.checkpoint import peek_checkpoint

        return int(peek_checkpoint(path, required=("it",))["it"])
    except Exception:  # a message on Ctrl-C must not fail; the iteration is then left out
        return None


def is_this_runs(path: str, args: Namespace, started_at: float) -> bool:
    """Whether the checkpoint at ``path`` is this run's: written since ``started_at``, or the one it resumed."""
    if not os.path.isfile(path):
        return False
    if os.path.getmtime(path) >= started_at:
        return True
    return bool(getattr(args, "resume", False)) and _same_path(getattr(args, "load_path", None), path)


def interrupted_message(args: Optional[Namespace], started_at: float, command: Optional[str] = None) -> str:
    """What Ctrl-C prints.

    Args:
        args: The run's configuration; None when Ctrl-C came before it was read.
        started_at: When this process started (``time.time()``), to tell this run's checkpoint from an
            earlier run's.
        command: How the user runs train.py (default :func:`~usb_cfsg.console.python_command`).

    Returns:
        This run's checkpoint with its iteration and the resume command, or that there is none yet
        (and whose checkpoint the folder holds instead).
    """
    if args is None:
        return "interrupted before the run started: nothing was written"
    command = command or python_command()
    run = os.path.join(str(args.save_dir), str(args.save_name))
    ckpt = os.path.join(run, CHECKPOINT)
    every = getattr(args, "num_eval_iter", None)
    if is_this_runs(ckpt, args, started_at):
        it = checkpoint_iteration(ckpt)
        when = time.strftime("%H:%M:%S", time.localtime(os.path.getmtime(ckpt)))
        at = f"saved at iteration {it}, {when}" if it is not None else f"saved {when}"
        again = f"; iterations after {it} run again" if it is not None else ""
        return (
            f"interrupted: this run's last checkpoint is {ckpt} ({at}); resume with: "
            f"{command} --c {shlex.quote(os.path.join(run, 'config.yaml'))} --resume true{again}"
        )
    schedule = f" (one is saved every num_eval_iter = {every} iterations)" if every else ""
    earlier = f"; {ckpt} is an earlier run's and was left as it was" if os.path.isfile(ckpt) and not args.resume else ""
    return (
        f"interrupted before this run's first checkpoint{schedule}: nothing to resume{earlier}; run the same "
        f"command again to start over"
    )


__all__ = ["checkpoint_iteration", "interrupted_message", "is_this_runs"]
