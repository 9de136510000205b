"""Classify images with a trained checkpoint, flagging unknown images: ``python predict.py --load_path CKPT PATH...``.

A thin entry point of the source tree; the command lives in :mod:`usb_cfsg.cli.predict` (installed:
``usb-cfsg-predict``), its output fields in :mod:`usb_cfsg.evaluation.predict`.
"""

import sys

from usb_cfsg.cli.predict import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli())
