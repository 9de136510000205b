"""Evaluate a checkpoint on the open-set test set: ``python eval.py --load_path CKPT [--key value ...]``.

A thin entry point of the source tree; the command lives in :mod:`usb_cfsg.cli.eval` (installed:
``usb-cfsg-eval``).
"""

import sys

from usb_cfsg.cli.eval import cli

__all__ = ["cli"]

if __name__ == "__main__":
    sys.exit(cli())
