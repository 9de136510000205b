"""usb_cfsg: CFSG-CLIP and open-set evaluation as a plug-in for USB (semilearn 0.3.2).

``import usb_cfsg`` makes our nets (``semilearn.nets``), algorithms (``ALGORITHMS``) and datasets
(our dataset registry) visible to USB's own lookups, without paying for the heavy imports up
front: if semilearn is already imported they are registered at once; otherwise they are
registered the moment semilearn finishes importing (every USB lookup imports semilearn first).
So ``python train.py --help``, configuration errors and missing-data errors come in about a
second, before torch and semilearn load. :func:`register` registers explicitly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
import warnings
from types import ModuleType
from typing import Any, Optional, Sequence

__version__ = "0.1.0"

# semilearn imports timm.models.layers, deprecated in timm 1.x: not ours to fix, keep logs readable.
warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"semilearn\.")
# AlgorithmBase builds a CUDA GradScaler even on CPU; our engine replaces it (engine/device.py).
warnings.filterwarnings("ignore", message="torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
logging.getLogger("usb_cfsg").addHandler(logging.NullHandler())

_SUBPACKAGES = ("algorithms", "datasets", "nets")
_registered = False


def register() -> None:
    """Register our nets, algorithms, datasets and run hooks (imports torch and semilearn; idempotent).

    ``evaluation`` fills the engine's run hooks (open-set evaluation, relevance maps): the engine
    imports no layer above it, this package root wires them together.
    """
    global _registered
    if _registered:
        return
    _registered = True
    for name in ("nets", "algorithms", "datasets", "evaluation"):
        importlib.import_module(f"{__name__}.{name}")


class _RegisterAfterSemilearn(importlib.abc.MetaPathFinder):
    """Runs :func:`register` right after the ``semilearn`` package finishes importing."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        if fullname != "semilearn":
            return None
        sys.meta_path.remove(self)  # one shot; the other finders locate the package
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            register()

        loader.exec_module = exec_module
        return spec


if "semilearn" in sys.modules:
    register()
elif not any(isinstance(f, _RegisterAfterSemilearn) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterSemilearn())


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["algorithms", "datasets", "nets", "register", "__version__"]
