"""iomatch: open-set targets and losses against hand-computed values, its scores, train.py end to end."""

import json
import math

import numpy as np
import pytest
import torch

import train
from tests.algorithms.test_openmatch import tb_scalars
from tests.conftest import tiny_run_argv
from usb_cfsg.algorithms.iomatch import IOMatch, iomatch_unlabeled_losses, open_set_targets, resolve_op_start
from usb_cfsg.config import build_config
from usb_cfsg.engine.checkpoint import safe_load


def _mb(pos_probs):
    """Multi-binary logits [B, 2, K] whose positive probabilities are ``pos_probs`` (negative logits 0)."""
    p = torch.tensor(pos_probs, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_open_set_targets_by_hand():
    q = open_set_targets(torch.tensor([[0.7, 0.3]], dtype=torch.float64), _mb([[0.8, 0.4]]))
    # q_k = p_k o_pos_k; q_K = sum_k p_k o_neg_k = 0.7 * 0.2 + 0.3 * 0.6
    assert q[0].tolist() == pytest.approx([0.56, 0.12, 0.32], abs=1e-9)


def test_unlabeled_losses_double_filtering_and_open_targets_by_hand():
    logits_w = torch.tensor([[math.log(19.0), 0.0]] * 2)  # p = (0.95, 0.05) for both images
    mb_w = _mb([[0.8, 0.4], [0.1, 0.1]]).float()  # image A looks like an inlier, B an outlier
    logits_s = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    open_s = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    u = iomatch_unlabeled_losses(logits_w, logits_s, mb_w, open_s, p_cutoff=0.9, q_cutoff=0.5)
    # A: q = (0.76, 0.02, 0.22) -> inlier; B: q = (0.095, 0.005, 0.9) -> outlier, excluded from L_ui
    assert u["in_mask"].tolist() == [True, False] and u["p_mask"].tolist() == [True, True]
    assert u["q"][1].tolist() == pytest.approx([0.095, 0.005, 0.9], abs=1e-6)
    # L_ui: soft CE of A's strong view [0, 0] against p = ln 2, averaged over the 2 images
    assert u["ui"].item() == pytest.approx(math.log(2.0) / 2, abs=1e-6)
    # L_op: A against q with uniform logits = ln 3; B: -(0.1 ln 1/4 + 0.9 ln 1/2)
    b = 0.1 * math.log(4.0) + 0.9 * math.log(2.0)
    assert u["op"].item() == pytest.approx((math.log(3.0) + b) / 2, abs=1e-6)
    # q_cutoff drops A (max q 0.76 < 0.8) but keeps the confident outlier B
    u8 = iomatch_unlabeled_losses(logits_w, logits_s, mb_w, open_s, p_cutoff=0.9, q_cutoff=0.8)
    assert u8["q_mask"].tolist() == [False, True] and u8["op"].item() == pytest.approx(b / 2, abs=1e-6)
    # distribution-aligned targets replace p: a flat target fails p_cutoff, so L_ui vanishes
    flat = iomatch_unlabeled_losses(logits_w, logits_s, mb_w, open_s, 0.9, 0.5, targets_p=torch.full((2, 2), 0.5))
    assert flat["ui"].item() == 0.0 and not flat["p_mask"].any()


def test_unknown_scores_by_hand():
    outputs = {
        "logits": np.array([[2.0, 0.0]]),
        "logits_mb": _mb([[0.8, 0.4]]).numpy(),
        "logits_open": np.array([[0.0, 0.0, math.log(2.0)]]),
    }
    scores, primary = IOMatch.compute_unknown_scores(outputs, None)
    p0 = 1 / (1 + math.exp(-2.0))
    assert primary == "open"
    assert scores["open"][0] == pytest.approx(0.5)
    assert scores["mb"][0] == pytest.approx(p0 * 0.2 + (1 - p0) * 0.6)
    assert scores["ova"][0] == pytest.approx(0.2)  # p_neg of the predicted class 0
    assert scores["msp"][0] == pytest.approx(1 - p0)


def test_defaults_are_the_papers():
    a = build_config(["--algorithm", "iomatch"])
    assert (a.p_cutoff, a.q_cutoff, a.mb_loss_ratio, a.op_loss_ratio, a.dist_align, a.da_len, a.proj_dim) == (
        0.95,
        0.5,
        1.0,
        1.0,
        True,
        128,
        128,
    )
    assert resolve_op_start(-1, 262144) == 1024 and resolve_op_start(0, 100) == 0


@pytest.mark.slow
def test_iomatch_20_iterations_through_train_py(cub_root, tmp_path):
    assert (
        train.cli(tiny_run_argv(cub_root, str(tmp_path), "io", algorithm="iomatch", iters=20, op_start=5, p_cutoff=0.5))
        == 0
    )
    run = tmp_path / "io"
    scalars = tb_scalars(run)
    for key in ("train/ce_loss", "train/mb_loss", "train/ui_loss", "train/op_loss", "train/q_mask_ratio"):
        assert key in scalars, key
    assert scalars["train/op_loss"][0] == 0.0  # off before op_start
    assert any(v > 0 for v in scalars["train/op_loss"])
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["algorithm"] == "iomatch" and ckpt["it"] == 20
    assert ckpt["extra"]["da_p_model"].shape == (128, 3) and int(ckpt["extra"]["da_p_model_ptr"]) == 20
    assert ckpt["model"]["open_head.weight"].shape[0] == 4 and "mb.fc.bias" not in ckpt["model"]
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["primary_score"] == "open" and set(metrics["scores"]) >= {"open", "mb", "ova", "msp"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm,extra",
    [
        ("openmatch", dict(start_fix=1, select_interval=2)),
        ("iomatch", dict(op_start=1)),
        ("clip_zeroshot", dict(text_encoder="clip")),
    ],
)
def test_two_process_gloo(cub_root, tmp_path, algorithm, extra):
    """Each baseline under DDP (2 CPU processes, gloo): trains, saves without the wrapper, rank 0 evaluates."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    argv = tiny_run_argv(cub_root, str(tmp_path), "ddp", algorithm=algorithm, iters=4, num_eval_iter=2, **extra)
    cmd = [
        sys.executable,
        os.path.join(root, "train.py"),
        *argv,
        "--world_size",
        "2",
        "--multiprocessing_distributed",
        "true",
    ]
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = safe_load(str(tmp_path / "ddp" / "latest_model.pth"))
    assert ckpt["config"]["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    metrics = json.loads((tmp_path / "ddp" / "openset_metrics.json").read_text())
    assert metrics["algorithm"] == algorithm
