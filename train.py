"""Train any registered algorithm: ``python train.py --c CONFIG [--key value ...]`` (``--help``: every key).

A thin entry point of the source tree; the command lives in :mod:`usb_cfsg.cli.train` (installed:
``usb-cfsg-train``).
"""

import sys

from usb_cfsg.cli.train import cli, interrupted

__all__ = ["cli", "interrupted"]

if __name__ == "__main__":
    sys.exit(cli())
