"""Evaluate a checkpoint on the open-set test set.

    python eval.py --load_path CKPT [--c CONFIG] [--out_dir DIR] [--relevance-dir DIR] [--key value ...]


Writes openset_metrics.json, roc.png, score_hist.png and confusion.csv to ``--out_dir`` (default:
the run folder ``<save_dir>/<save_name>/``). Without ``--c`` the config stored in the checkpoint is
used; ``--key value`` pairs override it. ``--relevance-dir DIR`` also saves relevance overlays of
the first eval images (nets with a relevance map, e.g. cfsg_clip) to ``DIR/eval/``. Exit status 2 on
a configuration or checkpoint error. The same command, installed: ``usb-cfsg-eval`` or
``python -m usb_cfsg.cli.eval`` (same arguments).
"""

import sys
from typing import Optional, Sequence

from ..engine.launch import setup_logging
from ..errors import UsbCfsgError


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate with ``argv`` (default: the command line); returns the exit status (0, 2 on an error)."""
    from ..evaluation.offline import evaluate_checkpoint

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    setup_logging(None)
    try:
        evaluate_checkpoint(argv)
    except UsbCfsgError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
