"""The badged study's table: per row, mean ± sample std over the seeds found, from each run's
``openset_metrics.json`` (docs/results/badged.md).

    python benchmarks/badged_table.py saved_models/badged_study [--sub erased] [--rows cfsg_clip ...] [--seeds 0]

Columns, in %: closed accuracy; the K+1-way seen accuracy and H-score of the row's headline score;
AUROC of the energy score (every algorithm reports it) against the near-OOD group (same items, the third
mark) and the far-OOD group (other items); the best near-OOD AUROC over the row's scores (with its name);
and, where the net has a relevance map (cfsg_clip), the share of the SFM's kept patches on the mark's
box and the pointing accuracy on seen test images; and the share of unlabeled images the row's
unlabeled loss used (``train/util_ratio`` in the run's TensorBoard log, averaged over the logged steps;
n/a for rows without one, e.g. zero-shot or fully supervised). ``--sub erased`` reads ``<run>/erased/`` instead:
the evaluation of the same checkpoint on test images without their mark (``eval.py --badge_erase true
--out_dir <run>/erased``). Cells are the comparison runner's (``usb_cfsg_tools.compare.format_cell``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Dict, List, Optional, Sequence

from usb_cfsg_tools.compare import format_cell

_RUN = re.compile(r"^(?P<row>.+)_seed(?P<seed>\d+)$")


def _near_best(m: dict) -> tuple[float, str]:
    pairs = [(s["difficulty"]["near"]["auroc"], name) for name, s in m["scores"].items() if "difficulty" in s]
    return max(pairs) if pairs else (float("nan"), "-")


def unlabeled_use(run: str) -> Optional[float]:
    """Mean of ``train/util_ratio`` over the steps logged in ``<run>/tensorboard`` (None without that scalar)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = os.path.join(run, "tensorboard")
    if not os.path.isdir(log):
        return None
    events = EventAccumulator(log, size_guidance={"scalars": 0})
    events.Reload()
    if "train/util_ratio" not in events.Tags().get("scalars", []):
        return None
    values = [e.value for e in events.Scalars("train/util_ratio")]
    return sum(values) / len(values) if values else None


def read_runs(folder: str, sub: str = "", seeds: Optional[Sequence[int]] = None) -> Dict[str, List[dict]]:
    """Row name -> the metrics of its seeds' runs (those with an ``openset_metrics.json``; of ``seeds`` only if given).

    Each run's dict also holds ``unlabeled_use`` (:func:`unlabeled_use` of the training run).
    """
    out: Dict[str, List[dict]] = {}
    for run in sorted(glob.glob(os.path.join(folder, "runs", "*"))):
        match = _RUN.match(os.path.basename(run))
        path = os.path.join(run, sub, "openset_metrics.json")
        if match and os.path.isfile(path) and (seeds is None or int(match["seed"]) in seeds):
            with open(path, encoding="utf-8") as fh:
                metrics = json.load(fh)
            metrics["unlabeled_use"] = unlabeled_use(run)
            out.setdefault(match["row"], []).append(metrics)
    return out


def table(runs: Dict[str, List[dict]], rows: Optional[Sequence[str]] = None) -> str:
    """The markdown table of ``rows`` (all found, in name order, when None)."""
    lines = [
        "| row | seeds | closed acc | seen acc (K+1) | H-score | near AUROC (energy) | far AUROC (energy) "
        "| best near AUROC (score) | kept on mark | pointing (seen) | unlabeled used |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows or sorted(runs):
        ms = runs.get(row, [])
        if not ms:
            lines.append(f"| {row} | 0 | no metrics | | | | | | | | |")
            continue
        n = len(ms)
        energy = [m["scores"]["energy"]["difficulty"] for m in ms]
        best = [_near_best(m) for m in ms]
        names = sorted({name for _, name in best})
        loc = [m.get("localization") or {} for m in ms]
        lines.append(
            "| "
            + " | ".join(
                [
                    row,
                    str(n),
                    format_cell([m["closed_acc"] for m in ms], n),
                    format_cell([m["seen_acc"] for m in ms], n),
                    format_cell([m["h_score"] for m in ms], n),
                    format_cell([e["near"]["auroc"] for e in energy], n),
                    format_cell([e["far"]["auroc"] for e in energy], n),
                    f"{format_cell([b for b, _ in best], n)} ({', '.join(names)})",
                    format_cell([x.get("kept_in_box") for x in loc], n),
                    format_cell([x.get("seen", {}).get("pointing_acc") for x in loc], n),
                    format_cell([m.get("unlabeled_use") for m in ms], n),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the comparison's --save_dir")
    parser.add_argument("--sub", default="", help="read <run>/<sub>/openset_metrics.json (e.g. erased)")
    parser.add_argument("--rows", nargs="*", default=None, help="rows in this order (default: all found)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="these seeds only (default: all found)")
    args = parser.parse_args(argv)
    print(table(read_runs(args.folder, args.sub, args.seeds), args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
