"""Device choice and mixed precision that work on CPU and CUDA alike."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager, Optional

import torch

from ..errors import ConfigError


def resolve_device(device: str, local_rank: Optional[int] = None) -> torch.device:
    """Turn the ``device`` key (``auto|cpu|cuda``) into a torch device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        local_rank: CUDA device index of this process (``gpu`` key or the launcher's local rank).

    Raises:
        ConfigError: ``cuda`` asked for on a machine without CUDA.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but CUDA is not available; use device: auto or cpu")
    return torch.device("cuda", local_rank or 0)


def autocast_factory(device: torch.device, enabled: bool) -> Callable[[], ContextManager]:
    """A zero-argument context-manager factory, as USB's ``self.amp_cm``.

    fp16 on CUDA (with a GradScaler), bf16 on CPU (no scaler needed).
    """
    if not enabled:
        return contextlib.nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (a disabled one passes losses through)."""
    return torch.amp.GradScaler(device.type, enabled=bool(amp and device.type == "cuda"))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (no-op on CPU), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
