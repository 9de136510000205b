"""Atomic checkpoint writes, safe loads (``weights_only=True``), and RNG state capture.

Checkpoints hold only tensors and plain Python types, so they load under torch>=2.6's default
``weights_only=True`` without trusting the file.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterable

import numpy as np
import torch

from ..errors import CheckpointError


def atomic_save(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def safe_load(path: str, required: Iterable[str] = ()) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: The file.
        required: Keys the caller needs; a missing one is an error naming it.

    Raises:
        CheckpointError: missing file, unreadable/untrusted content, or missing keys.
    """
    if not path or not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path!r} does not exist; give load_path: <save_dir>/<save_name>/"
            f"latest_model.pth (or model_best.pth)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path!r}: it is corrupt, truncated, or holds objects that "
            f"are not tensors/plain Python types ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path!r} holds a {type(ckpt).__name__}, not a training checkpoint (a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path!r} lacks {missing}; it has {sorted(ckpt)[:20]}. Expected a "
            f"checkpoint written by usb_cfsg's train.py (latest_model.pth / model_best.pth)"
        )
    return ckpt


def peek_checkpoint(path: str, required: Iterable[str] = ("format", "it", "config")) -> Dict[str, Any]:
    """The small entries of a checkpoint (``format``, ``it``, ``config``, ``algorithm``, ...), read cheaply.

    Memory-maps the file (``torch.load(mmap=True)``), so checking a resume before building the
    run costs milliseconds even for a large model; tensors are not read. Same errors as
    :func:`safe_load`.
    """
    if not path or not os.path.isfile(path):
        return safe_load(path, required)  # raises the "does not exist" error
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = safe_load(path, required)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path!r} holds a {type(ckpt).__name__}, not a training checkpoint (a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path!r} lacks {missing}; it has {sorted(ckpt)[:20]}. Expected a "
            f"checkpoint written by usb_cfsg's train.py (latest_model.pth / model_best.pth)"
        )
    return {k: v for k, v in ckpt.items() if not isinstance(v, (dict, torch.Tensor)) or k in ("config",)}


def rng_state() -> Dict[str, Any]:
    """Every global RNG's state, as tensors and plain Python types."""
    np_state: Any = np.random.get_state()  # (name, keys, pos, has_gauss, cached_gaussian)
    state = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str, path: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        raise CheckpointError(
            f"{what} in {path!r} does not match this run's network: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shape[:5]]}. "
            f"Use the same net, num_classes and algorithm switches as the run that wrote it"
        )
    module.load_state_dict(state, strict=True)
