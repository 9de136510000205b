"""cfsg_clip vs USB's fixmatch on the Fashion-MNIST open-set demo split, same budget and seed.

Trains both demo configs (config/demo/{fixmatch,cfsg}_fmnist.yaml; any extra ``--key value``
is applied to both), then prints closed-set accuracy and the open-set metrics of each run's
primary unknown score (fixmatch: 1 - max softmax; cfsg_clip: its ``ood_score``) side by side.

    python benchmarks/compare_fmnist.py [--num_train_iter 300] [--json docs/fmnist_comparison.json]
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = ("config/demo/fixmatch_fmnist.yaml", "config/demo/cfsg_fmnist.yaml")
COLUMNS = ("closed_acc", "auroc", "fpr95", "open_bacc", "unknown_recall", "h_score", "macro_f1")


def main(argv: list[str]) -> int:
    import train
    from usb_cfsg.config import build_config

    out_json = None
    if "--json" in argv:
        i = argv.index("--json")
        out_json = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    rows = []
    for cfg in CONFIGS:
        full = ["--c", os.path.join(ROOT, cfg), *argv]
        if train.cli(full) != 0:
            return 1
        args = build_config(full)
        with open(os.path.join(args.save_dir, args.save_name, "openset_metrics.json")) as fh:
            metrics = json.load(fh)
        rows.append(
            {
                "algorithm": args.algorithm,
                "config": cfg,
                "num_train_iter": args.num_train_iter,
                "seed": args.seed,
                "primary_score": metrics["primary_score"],
                **{k: metrics[k] for k in COLUMNS},
                "scores": metrics.get("scores", {}),
            }
        )
    print(f"{'algorithm':<10} {'score':<8}" + "".join(f"{c:>15}" for c in COLUMNS))
    for r in rows:
        cells = "".join(f"{'n/a' if r[c] is None else f'{100 * r[c]:.2f}':>15}" for c in COLUMNS)
        print(f"{r['algorithm']:<10} {r['primary_score']:<8}" + cells)
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
