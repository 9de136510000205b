"""usb_cfsg: CFSG-CLIP and open-set evaluation as a plug-in for USB (semilearn 0.3.2).

``import usb_cfsg`` registers our nets (``semilearn.nets``), algorithms (``ALGORITHMS``) and
datasets (our dataset registry) so that USB's own lookups find them.
"""
from __future__ import annotations

import logging
import warnings

__version__ = "0.1.0"

# semilearn imports timm.models.layers, deprecated in timm 1.x: not ours to fix, keep logs readable.
warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"semilearn\.")
# AlgorithmBase builds a CUDA GradScaler even on CPU; our engine replaces it (engine/device.py).
warnings.filterwarnings("ignore", message="torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
logging.getLogger("usb_cfsg").addHandler(logging.NullHandler())

from . import algorithms, datasets, nets  # noqa: E402,F401  (registration side effects)

__all__ = ["algorithms", "datasets", "nets", "__version__"]
