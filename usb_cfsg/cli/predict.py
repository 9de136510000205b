"""Classify images with a trained checkpoint, flagging unknown (unseen-class) images.

``usb-cfsg-predict --load_path CKPT [--threshold T] [--device cpu] [--batch_size N] [--relevance_dir DIR] PATH...``
(or ``python -m usb_cfsg.cli.predict``, ``python predict.py`` in a source tree).

One JSON line per image on stdout: ``{"path", "label", "class_index", "closest_class", "confidence",
"unknown_score", "is_unknown"}`` (``label`` "unknown" and ``class_index`` -1 for an unknown image;
``closest_class`` and ``confidence`` are the closed-set head's best seen class and its softmax
probability, also for unknown images -- not a probability of being unknown, which is what
``unknown_score`` measures), plus ``"relevance"``, the path of the relevance figure, with
``--relevance_dir``. An unreadable image gives ``{"path", "error"}`` and the others go on. Exit
status: 0 all predicted, 1 some images unreadable, 2 a usage or checkpoint error. Field meanings in
detail: :mod:`usb_cfsg.evaluation.predict`.
"""

import sys
from typing import Optional, Sequence

from ..evaluation.predict import main


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Predict with ``argv`` (default: the command line); returns the exit status (0, 1 or 2, as above)."""
    return main(argv)


__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli())
