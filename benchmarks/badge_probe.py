"""The fine-grained premise, measured: does the frozen CLIP's global feature miss a cue its patches carry?

On a dataset whose images carry a cue box (``fmnist_badged``: the mark), with the CLIP weights a
config names and no training, linear probes (scikit-learn logistic regression on standardised
features) are fitted on frozen features of **unlabeled training** images of the seen classes (the
evaluator's calibration images, evaluation transform) and scored on the seen-class **test** images:

* ``global``: the projected class token g (what CLIP's zero-shot classifier and MCM read);
* ``mark_tokens``: the mean of the projected final patch tokens of the patches the mark's box touches;
* ``mark_glmcm``: the same over GL-MCM's local features (the SFM's default affinity features);
* ``global+mark_tokens``: both concatenated;
* ``mark_pixels``: the input pixels of the patches the mark touches (no network: what a probe can read
  from the picture itself, the ceiling of the cue's visibility).

Each is scored on the seen classes (``probe_acc``, K-way) and on the mark alone (``mark_acc``: which
of the two seen marks, for ``fmnist_badged``'s item-major class order, label ``y % 2``).

The premise of a fine-grained testbed holds when ``global`` is well below ``mark_tokens``: the cue is
in the patches, and the global embedding does not carry it. (Zero-shot accuracy on the same images
is printed beside for reference.)

Usage::

    python benchmarks/badge_probe.py --c config/demo/cfsg_fmnist_badged.yaml

Prints one JSON line per feature. CPU, about a minute at 96 px.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _features(
    net, dataset, boxes: np.ndarray, img_size: int, crop_ratio: float
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Frozen features of every item of ``dataset`` (eval transform) and their labels."""
    from usb_cfsg.evaluation.localization import box_patch_mask

    bb = net.backbone
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it["x_lb"] for it in items])
    labels = np.asarray([int(it["y_lb"]) for it in items])
    out: Dict[str, list] = {"global": [], "mark_tokens": [], "mark_glmcm": [], "mark_pixels": []}
    with torch.no_grad():
        for start in range(0, len(images), 256):
            chunk = images[start : start + 256]
            tokens, last_in = bb.tuned(bb.trunk(chunk), return_last_input=True)
            z = bb.project(tokens)
            dense = bb.dense_features(last_in, "glmcm")
            grid = int(round((z.shape[1] - 1) ** 0.5))
            mask = torch.from_numpy(box_patch_mask(boxes[start : start + len(chunk)], grid, img_size, crop_ratio))
            w = (mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)).unsqueeze(-1)
            out["global"].append(z[:, 0].float())
            out["mark_tokens"].append((w * z[:, 1:].float()).sum(1))
            out["mark_glmcm"].append((w * dense.float()).sum(1))
            p = chunk.shape[-1] // grid  # the input pixels of the touched patches (others zeroed)
            keep = mask.view(-1, 1, grid, 1, grid, 1).float().expand(-1, 1, grid, p, grid, p)
            out["mark_pixels"].append((chunk * keep.reshape(len(chunk), 1, grid * p, grid * p)).flatten(1))
    feats = {
        k: (torch.cat(v) if k == "mark_pixels" else F.normalize(torch.cat(v), dim=-1)).numpy() for k, v in out.items()
    }
    feats["global+mark_tokens"] = np.concatenate([feats["global"], feats["mark_tokens"]], axis=1)
    return feats, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", required=True, help="a run config on a dataset with cue boxes (fmnist_badged)")
    opts = parser.parse_args(argv)

    from common import config_clip_net
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import usb_cfsg  # noqa: F401
    from usb_cfsg.config import build_config
    from usb_cfsg.datasets import build_openset_datasets
    from usb_cfsg.datasets.build import CALIBRATION_SET
    from usb_cfsg.nets.clip import OPENAI_MEAN, OPENAI_STD

    args = build_config(["--c", opts.c, "--algorithm", "clip_zeroshot"])
    datasets, info = build_openset_datasets(args, "clip_zeroshot", OPENAI_MEAN, OPENAI_STD, None)
    if info.eval_boxes is None:
        print(f"{args.dataset} has no cue boxes; this probe needs them (fmnist_badged)", file=sys.stderr)
        return 2
    net = config_clip_net(args, info)
    cal = datasets[CALIBRATION_SET]
    train_f, train_y = _features(net, cal, cal.boxes, args.img_size, args.crop_ratio)
    seen = train_y < args.num_classes
    test_f, test_y = _features(net, datasets["eval"], info.eval_boxes, args.img_size, args.crop_ratio)
    t = F.normalize(net.text_embeddings.float(), dim=-1).numpy()
    zs = float(((test_f["global"] @ t.T).argmax(1) == test_y).mean())
    for name in train_f:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
        probe.fit(train_f[name][seen], train_y[seen])
        acc = float((probe.predict(test_f[name]) == test_y).mean())
        mark_probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
        mark_probe.fit(train_f[name][seen], train_y[seen] % 2)
        mark_acc = float((mark_probe.predict(test_f[name]) == test_y % 2).mean())
        print(
            json.dumps(
                {
                    "feature": name,
                    "probe_acc": round(100 * acc, 2),
                    "mark_acc": round(100 * mark_acc, 2),
                    "train_images": int(seen.sum()),
                    "test_images": len(test_y),
                    "zero_shot_acc": round(100 * zs, 2),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
