"""clip_zeroshot: no training through train.py, and metrics equal to a direct computation from open_clip itself."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.config import build_config
from usb_cfsg.engine.checkpoint import safe_load


def _direct_scores(ckpt, images, temperature=1.0):
    """Zero-shot logits, MCM and GL-MCM computed with open_clip's own forward and the checkpoint's weights."""
    import open_clip

    from usb_cfsg.nets.clip import _ensure_configs

    _ensure_configs()
    model = open_clip.create_model("clip-tiny", pretrained=None, force_image_size=images.shape[-1]).eval()
    state = ckpt["ema_model"]
    prefix = "backbone.visual."
    model.visual.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    t = F.normalize(state["text_embeddings"].float(), dim=-1)
    captured = {}
    last = model.visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda mod, inp: captured.__setitem__("x", inp[0]))
    with torch.no_grad():
        z = model.encode_image(images)
        hook.remove()
        x = captured["x"]  # the last block's input [B, T, W] (batch first)
        width = model.visual.transformer.width
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :])
        v = x + last.ls_1(last.attn.out_proj(v))  # GL-MCM's code: value path + residual ...
        v = v + last.ls_2(last.mlp(last.ln_2(v)))  # ... + MLP, then ln_post and proj, every patch
        dense = model.visual.ln_post(v[:, 1:]) @ model.visual.proj

        def s_mcm(f):
            return (F.normalize(f, dim=-1) @ t.t() / temperature).softmax(dim=-1).max(dim=-1).values

        cos = F.normalize(z, dim=-1) @ t.t()
        mcm = 1 - s_mcm(z)
        glmcm = 1 - (s_mcm(z) + s_mcm(dense).max(dim=1).values) / 2
    return cos, mcm, glmcm


def test_zero_shot_run_trains_nothing_and_matches_open_clip(cub_root, tmp_path):
    argv = tiny_run_argv(cub_root, str(tmp_path), "zs", algorithm="clip_zeroshot", iters=0, text_encoder="clip")
    assert train.cli(argv) == 0
    run = tmp_path / "zs"
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["it"] == 0 and ckpt["algorithm"] == "clip_zeroshot"
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["primary_score"] == "mcm" and set(metrics["scores"]) == {"mcm", "glmcm", "msp", "energy"}

    from usb_cfsg.datasets import build_openset_datasets
    from usb_cfsg.nets.clip import OPENAI_MEAN, OPENAI_STD

    datasets, info = build_openset_datasets(build_config(argv), "clip_zeroshot", OPENAI_MEAN, OPENAI_STD, None)
    test = datasets["test_open"]
    items = [test[i] for i in range(len(test))]
    images = torch.stack([it["x_lb"] for it in items])
    y = np.array([it["y_lb"] for it in items])
    k = info.num_seen
    cos, mcm, glmcm = _direct_scores(ckpt, images)
    seen = y < k
    assert metrics["closed_acc"] == pytest.approx(float((cos.argmax(1).numpy()[seen] == y[seen]).mean()))
    assert metrics["scores"]["mcm"]["auroc"] == pytest.approx(roc_auc_score(y == k, mcm.numpy()), abs=1e-9)
    assert metrics["scores"]["glmcm"]["auroc"] == pytest.approx(roc_auc_score(y == k, glmcm.numpy()), abs=1e-9)
    energy = -torch.logsumexp(30 * cos.double(), dim=1)  # at the trained cosine heads' scale, T = 1
    assert metrics["scores"]["energy"]["auroc"] == pytest.approx(roc_auc_score(y == k, energy.numpy()), abs=1e-9)
    # per image: the net's own scores are the direct ones (not only their ranking)
    from usb_cfsg.nets.clip import build_clip_net

    net = build_clip_net(
        "clip-tiny",
        k,
        None,
        head="clip_zeroshot",
        img_size=64,
        num_tuned_blocks=4,
        class_names=info.seen_class_names,
        text_encoder="clip",
    ).eval()
    net.load_state_dict(ckpt["ema_model"])
    with torch.no_grad():
        out = net(images)
    assert torch.allclose(out["score_mcm"], mcm, atol=1e-5) and torch.allclose(out["score_glmcm"], glmcm, atol=1e-5)
    # the patch map is GL-MCM's local term per patch: its max is the local MCM inside the GL-MCM score
    assert out["relevance"].shape == (len(images), 16)
    local_max = 2.0 * (1.0 - out["score_glmcm"]) - (1.0 - out["score_mcm"])
    assert torch.allclose(out["relevance"].max(dim=1).values, local_max, atol=1e-5)
    assert torch.allclose(out["logits"], 100 * cos, atol=1e-3)
    # the state is untouched: the trained blocks equal what was loaded (nothing stepped)
    assert all(torch.equal(v, ckpt["ema_model"][n]) for n, v in ckpt["model"].items())


def test_any_budget_is_ignored_with_a_notice(cub_root, tmp_path):
    argv = tiny_run_argv(
        cub_root, str(tmp_path), "zs5", algorithm="clip_zeroshot", iters=5, text_encoder="clip", ood_score="glmcm"
    )
    assert train.cli(argv) == 0
    log = (tmp_path / "zs5" / "log.txt").read_text()
    assert "clip_zeroshot trains nothing: num_train_iter 5 is ignored" in log
    assert safe_load(str(tmp_path / "zs5" / "latest_model.pth"))["it"] == 0
    assert json.loads((tmp_path / "zs5" / "openset_metrics.json").read_text())["primary_score"] == "glmcm"
