"""Evaluate a checkpoint on the open-set test set.

    python eval.py --load_path CKPT [--c CONFIG] [--out_dir DIR] [--relevance_dir DIR] [--key value ...]

Writes openset_metrics.json, roc.png, score_hist.png, confusion.csv and open_scores.npz beside the
checkpoint (its folder), or to ``--out_dir DIR``; refuses to overwrite the results of another
checkpoint there (give another ``--out_dir``). The summary table goes to stdout
(``eval.py ... > out.txt`` keeps it), progress to stderr. Without ``--c`` the config stored in the
checkpoint is used; ``--key value`` pairs override it, e.g. ``--ood_score mcm``, or
``--threshold_rule otsu`` to re-fit the thresholds under another rule without retraining.
``--relevance_dir DIR`` also saves relevance overlays of the first eval images (nets with a
relevance map, e.g. cfsg_clip) to ``DIR/eval/``. Exit status 2 on a configuration or checkpoint
error. Every key: ``python train.py --help``. The same command, installed: ``usb-cfsg-eval`` or
``python -m usb_cfsg.cli.eval`` (same arguments).
"""

import os
import sys
from typing import Optional, Sequence

# As train: OpenMP threads sleep instead of spinning while they wait (same results; on a shared CPU
# spinning made evaluation 2-3x slower). Set before torch loads; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..console import write_stdout


def _show(text: str) -> None:
    write_stdout(text)  # the summary on stdout; quiet when the reader closes the pipe


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate with ``argv`` (default: the command line); returns the exit status (0, 2 on an error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        write_stdout(__doc__.strip())
        return 0
    from ..engine.launch import setup_logging
    from ..errors import UsbCfsgError
    from ..evaluation.offline import evaluate_checkpoint

    setup_logging(None)
    try:
        evaluate_checkpoint(argv, show=_show)
    except UsbCfsgError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
