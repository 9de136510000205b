"""Evaluate a checkpoint on the open-set test set.

    python eval.py --load_path CKPT [--c CONFIG] [--out_dir DIR] [--relevance-dir DIR] [--key value ...]


Writes openset_metrics.json, roc.png, score_hist.png and confusion.csv to ``--out_dir`` (default:
the run folder ``<save_dir>/<save_name>/``). Without ``--c`` the config stored in the checkpoint is
used; ``--key value`` pairs override it. ``--relevance-dir DIR`` also saves relevance overlays of
the first eval images (nets with a relevance map, e.g. cfsg_clip) to ``DIR/eval/``. Exit status 2 on
a configuration or checkpoint error.
"""

import sys

import usb_cfsg  # noqa: F401  (registrations)
from usb_cfsg.engine.launch import setup_logging
from usb_cfsg.errors import UsbCfsgError


def cli(argv=None) -> int:
    from usb_cfsg.evaluation.offline import evaluate_checkpoint

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
