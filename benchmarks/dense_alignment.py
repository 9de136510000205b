"""How well each kind of dense (patch) feature aligns with the class text: which features should the SFM use?

For every seen-class test image of a config's data, with the CLIP weights the config names (no
training), each dense-feature kind (``glmcm``: GL-MCM's local features, the last block with self-only
attention; ``value``: MaskCLIP's value path alone; ``tokens``: the final patch tokens) is scored by

* ``patch_acc``: the fraction of patches whose nearest class text (cosine) is the image's class;
* ``top_quarter_acc``: the same over the quarter of patches with the highest text affinity
  (the patches the SFM would keep at ``sfm_keep_ratio`` 0.25, ranked by their best class cosine);
* ``pooled_acc``: the accuracy of the mean of those kept patches' features (a crude local classifier).

On data with object boxes (``fmnist_cluttered``) it also prints, per kind, where the SFM's relevance
would point with each rule of ``sfm_relevance`` (``patches``, ``classes``; the config's τ_f, posterior
scale and keep ratio) with the pretrained weights: pointing accuracy, relevance mass in the box and
kept patches touching it, beside chance (:func:`usb_cfsg.evaluation.localization.localization_metrics`).

Usage::

    python benchmarks/dense_alignment.py --c config/demo/cfsg_fmnist.yaml [--max_images 2000]

Prints one JSON line per kind. CPU, a minute for 2,000 images of the demo at 64 px.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", required=True, help="a run config (its data, net and CLIP weights are used)")
    parser.add_argument("--max_images", type=int, default=2000, help="seen-class test images, evenly spaced")
    opts = parser.parse_args(argv)

    from common import config_clip_net

    import usb_cfsg  # noqa: F401
    from usb_cfsg.config import build_config
    from usb_cfsg.datasets import build_openset_datasets
    from usb_cfsg.nets.clip import OPENAI_MEAN, OPENAI_STD

    args = build_config(["--c", opts.c, "--algorithm", "clip_zeroshot"])
    own = build_config(["--c", opts.c])  # the file's own algorithm: its SFM keys, if any
    # SemanticFilter keyword -> config key; keys the config lacks keep SemanticFilter's defaults
    sfm_keys = dict(keep_ratio="sfm_keep_ratio", temperature="sfm_temperature", logit_scale="sfm_posterior_scale")
    sfm_kwargs = {kw: getattr(own, key) for kw, key in sfm_keys.items() if hasattr(own, key)}
    datasets, info = build_openset_datasets(args, "clip_zeroshot", OPENAI_MEAN, OPENAI_STD, None)
    test = datasets["eval"]
    step = max(1, len(test) // opts.max_images)
    rows = list(range(0, len(test), step))[: opts.max_images]
    items = [test[i] for i in rows]
    images = torch.stack([it["x_lb"] for it in items])
    y = torch.tensor([int(it["y_lb"]) for it in items])
    net = config_clip_net(args, info)
    t = F.normalize(net.text_embeddings.float(), dim=-1)
    bb = net.backbone
    results = {}
    with torch.no_grad():
        feats = {"glmcm": [], "value": [], "tokens": []}
        globals_ = []
        for chunk in images.split(256):
            tokens, last_in = bb.tuned(bb.trunk(chunk), return_last_input=True)
            globals_.append(bb.project(tokens)[:, 0])
            feats["glmcm"].append(bb.dense_features(last_in, "glmcm"))
            feats["value"].append(bb.dense_features(last_in, "value"))
            feats["tokens"].append(bb.project(tokens)[:, 1:])
        for kind, parts in feats.items():
            dense = F.normalize(torch.cat(parts).float(), dim=-1)  # [B, N, D]
            cos = dense @ t.t()  # [B, N, K]
            patch_pred = cos.argmax(-1)
            n_keep = max(1, dense.shape[1] // 4)
            keep = cos.max(-1).values.topk(n_keep, dim=1).indices  # [B, n_keep]
            kept_pred = patch_pred.gather(1, keep)
            pooled = dense.gather(1, keep.unsqueeze(-1).expand(-1, -1, dense.shape[-1])).mean(1)
            results[kind] = {
                "kind": kind,
                "images": len(items),
                "patches": int(dense.shape[1]),
                "patch_acc": round(100 * float((patch_pred == y[:, None]).float().mean()), 2),
                "top_quarter_acc": round(100 * float((kept_pred == y[:, None]).float().mean()), 2),
                "pooled_acc": round(100 * float(((pooled @ t.t()).argmax(-1) == y).float().mean()), 2),
            }
            print(json.dumps(results[kind]))
            if info.eval_boxes is not None:
                _localization(args, sfm_kwargs, kind, torch.cat(globals_).float(), dense, t, info.eval_boxes[rows])
    return 0


def _localization(
    args, sfm_kwargs: dict, kind: str, g: torch.Tensor, dense: torch.Tensor, t: torch.Tensor, boxes
) -> None:
    """Print where each SFM relevance rule points on images with boxes (one JSON line per rule).

    ``sfm_kwargs`` are SemanticFilter keywords from the config (its SFM keys; none for other algorithms).
    """
    from usb_cfsg.evaluation.localization import localization_metrics
    from usb_cfsg.modules.semantic_filter import RELEVANCE_RULES, SemanticFilter

    for rule in RELEVANCE_RULES:
        sfm = SemanticFilter(relevance=rule, **sfm_kwargs)
        _, _, relevance, keep_idx, _ = sfm.select(g, dense, t)
        loc = localization_metrics(relevance.numpy(), boxes, args.img_size, args.crop_ratio, keep_idx=keep_idx.numpy())
        assert loc is not None
        keys = ("pointing_acc", "mass_in_box", "kept_in_box", "chance")
        print(json.dumps({"kind": kind, "sfm_relevance": rule, **{k: round(100 * loc[k], 2) for k in keys}}))


if __name__ == "__main__":
    sys.exit(main())
