"""Device choice, mixed precision and the GPU fast paths, working on CPU and CUDA alike.

* :func:`resolve_device`: the ``device`` key (``auto|cpu|cuda``).
* :func:`amp_dtype` / :func:`autocast_factory` / :func:`grad_scaler`: the ``amp`` and
  ``amp_dtype`` keys. ``amp_dtype: auto`` keeps USB's behaviour (fp16 + GradScaler on CUDA) and
  uses bf16 on CPU; ``bf16`` on CUDA needs no GradScaler (bf16 has fp32's exponent range).
* :func:`apply_fast_paths`: the ``compile`` key (``torch.compile`` of the trainable blocks and the
  heads, with a logged fallback to eager execution if compilation fails) and the
  ``channels_last`` key (NHWC memory format for the patch-embedding convolution and its input).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, ContextManager, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError

logger = logging.getLogger("usb_cfsg")

AMP_DTYPES = ("auto", "bf16", "fp16")


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


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype for ``amp_dtype: name`` on ``device``.

    ``auto``: fp16 on CUDA (USB's AMP), bf16 on CPU. ``bf16`` on CUDA needs a GPU with bf16
    support (Ampere or newer). ``fp16`` is CUDA only.

    Raises:
        ConfigError: an unknown name, fp16 on CPU, or bf16 on a GPU without bf16.
    """
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp_dtype: fp16 needs CUDA; on CPU use amp_dtype: bf16 (or auto)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp_dtype: bf16 was asked for but this GPU has no bf16 support; use amp_dtype: fp16")
    return torch.bfloat16


def autocast_factory(device: torch.device, enabled: bool, dtype: str = "auto") -> Callable[[], ContextManager]:
    """A zero-argument context-manager factory, as USB's ``self.amp_cm``.

    Args:
        device: Where the model runs.
        enabled: The ``amp`` key; False gives a no-op context.
        dtype: The ``amp_dtype`` key (see :func:`amp_dtype`).
    """
    if not enabled:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=amp_dtype(device, dtype))


def grad_scaler(device: torch.device, amp: bool, dtype: str = "auto") -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (a disabled one passes losses through).

    bf16 has fp32's exponent range, so bf16 autocast (CPU, or ``amp_dtype: bf16`` on CUDA) needs
    no loss scaling.
    """
    enabled = bool(amp) and device.type == "cuda" and amp_dtype(device, dtype) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (no-op on CPU), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- compile
class CompileFallback:
    """A module's forward (or a bound method) run through ``torch.compile``, falling back to eager on failure.

    Compilation happens lazily at the first call; if it (or a later recompilation) raises, a
    warning names the module and the error, and this module runs eagerly from then on. The
    module's parameters and ``state_dict`` keys are untouched (checkpoints stay compatible).

    Args:
        fn: The module's ``forward`` (or another bound method) to compile.
        name: How the warning names it.
        backend: ``torch.compile`` backend (``inductor`` by default).
        mode: ``torch.compile`` mode (None = default).
    """

    def __init__(
        self, fn: Callable[..., Any], name: str, backend: Any = "inductor", mode: Optional[str] = None
    ) -> None:
        self.name = name
        self.eager = fn
        self.failed: Optional[str] = None
        self.compiled = torch.compile(self.eager, backend=backend, mode=mode)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                self.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
                logger.warning(
                    "compile: torch.compile of %s failed (%s); running it eagerly. "
                    "Set compile: false to skip the attempt.",
                    self.name,
                    self.failed,
                )
        return self.eager(*args, **kwargs)


#: methods of our ClipBackbone that run the last block for a subset of tokens (CFSG's forward)
_BACKBONE_METHODS = ("last_block_state", "last_block_queries")


def compile_targets(model: nn.Module) -> List[Tuple[str, Any, str]]:
    """What ``compile: true`` compiles, as ``(name, owner, attribute)``: the blocks and the heads.

    For our CLIP nets: the vision tower's residual blocks (frozen ones too: they run on every
    step), the backbone's partial last-block methods and the network's head modules
    (classifiers, OVA head, VSI). Any other net: the net as a whole.
    """
    from ..nets.backbone import unwrap

    net = unwrap(model)
    backbone = getattr(net, "backbone", None)
    if backbone is None or not hasattr(backbone, "visual"):
        return [(type(net).__name__, net, "forward")]
    targets: List[Tuple[str, Any, str]] = [
        (f"backbone.visual.transformer.resblocks.{i}", block, "forward")
        for i, block in enumerate(backbone.visual.transformer.resblocks)
    ]
    targets += [(f"backbone.{m}", backbone, m) for m in _BACKBONE_METHODS if hasattr(backbone, m)]
    for name in ("classifier", "coarse_head", "fine_head", "ova", "vsi"):
        head = getattr(net, name, None)
        if isinstance(head, nn.Module):
            targets.append((name, head, "forward"))
    return targets


def compile_model(model: nn.Module, backend: Any = "inductor", mode: Optional[str] = None) -> List[CompileFallback]:
    """Compile :func:`compile_targets` of ``model`` in place, each with an eager fallback.

    Call it after the EMA copy of the model is made (a deep copy of a compiled instance would
    call the original's forward).

    Returns:
        The wrappers (``.failed`` tells whether a module fell back to eager).
    """
    wrappers = []
    for name, owner, attr in compile_targets(model):
        wrapper = CompileFallback(getattr(owner, attr), name, backend=backend, mode=mode)
        setattr(owner, attr, wrapper)  # on this instance only
        wrappers.append(wrapper)
    return wrappers


def _to_channels_last(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, torch.Tensor) and a.dim() == 4 and a.is_floating_point()
        else a
        for a in args
    )


def convolutions(model: nn.Module) -> Iterable[nn.Module]:
    """The 2-D convolutions of a model (a CLIP ViT has one: the patch embedding)."""
    return (m for m in model.modules() if isinstance(m, nn.Conv2d))


def apply_channels_last(model: nn.Module) -> int:
    """NHWC memory format for every 2-D convolution's weight and input (the output is NCHW-shaped as before).

    Returns:
        The number of convolutions switched.
    """
    count = 0
    for conv in convolutions(model):
        conv.to(memory_format=torch.channels_last)
        conv.register_forward_pre_hook(_to_channels_last)
        count += 1
    return count


def apply_fast_paths(
    model: nn.Module, args: Any, device: torch.device, backend: Any = "inductor"
) -> Optional[List[CompileFallback]]:
    """Apply the ``channels_last`` and ``compile`` keys of ``args`` to ``model`` in place.

    Args:
        model: The training model (not yet wrapped in DDP; the EMA copy already made).
        args: The run's configuration (reads ``channels_last``, ``compile``; absent = false).
        device: Where the model runs (channels_last is applied on CUDA only: on CPU it slows
            the patch embedding down).
        backend: ``torch.compile`` backend.

    Returns:
        The compile wrappers, or None when ``compile`` is off.
    """
    if getattr(args, "channels_last", False):
        if device.type == "cuda":
            n = apply_channels_last(model)
            logger.info("channels_last: %d convolution(s) switched to NHWC", n)
        else:
            logger.info("channels_last: ignored on CPU (it helps cuDNN convolutions only)")
    if getattr(args, "compile", False):
        wrappers = compile_model(model, backend=backend)
        logger.info(
            "compile: %d modules will be compiled with torch.compile (%s) at their first call", len(wrappers), backend
        )
        return wrappers
    return None


__all__ = [
    "AMP_DTYPES",
    "CompileFallback",
    "amp_dtype",
    "apply_channels_last",
    "apply_fast_paths",
    "autocast_factory",
    "compile_model",
    "compile_targets",
    "grad_scaler",
    "resolve_device",
    "synchronize",
]
