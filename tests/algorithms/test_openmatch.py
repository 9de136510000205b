"""openmatch: loss terms against hand-computed values, the selection schedule, two weak views, train.py end to end."""

import functools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.algorithms.openmatch import (
    OpenMatch,
    fixmatch_on_selected,
    openmatch_losses,
    resolve_select_interval,
    resolve_start_fix,
)
from usb_cfsg.config import build_config
from usb_cfsg.engine.checkpoint import safe_load
from usb_cfsg.errors import ConfigError

LN3 = math.log(3.0)


def tb_scalars(run_dir):
    """TensorBoard scalars of a run folder: tag -> values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _ova(pos_logits):
    """OVA logits [B, 2, K] with negative logits 0 and the given positive logits (p_pos = sigmoid)."""
    pos = torch.tensor(pos_logits, dtype=torch.float32)
    return torch.stack([torch.zeros_like(pos), pos], dim=1)


def test_openmatch_losses_use_both_weak_views_by_hand():
    # labeled: one image, K = 2, two weak views; view 1 predicts the label, view 2 the other class
    logits_lb = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0])
    ova_lb = _ova([[LN3, 0.0], [0.0, 0.0]])  # view 1: p_pos = (0.75, 0.5); view 2: (0.5, 0.5)
    u1 = _ova([[LN3, 0.0]])  # unlabeled view 1: p_pos = (0.75, 0.5)
    u2 = _ova([[0.0, 0.0]])  # unlabeled view 2: p_pos = (0.5, 0.5)
    t = openmatch_losses(logits_lb, ova_lb, y, u1, u2)

    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert t["ce"].item() == pytest.approx((softplus(-2.0) + softplus(1.0)) / 2, abs=1e-6)
    # view 1: -log 0.75 (positive) + -log 0.5 (hardest negative); view 2: -log 0.5 twice
    assert t["ova"].item() == pytest.approx((-math.log(0.75) + 3 * math.log(2.0)) / 2, abs=1e-6)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert t["em"].item() == pytest.approx(((h(0.75) + h(0.5)) / 2 + h(0.5)) / 2, abs=1e-6)
    # (p_pos - p_pos')^2 + (p_neg - p_neg')^2 summed over classes: 2 * 0.25^2
    assert t["socr"].item() == pytest.approx(0.125, abs=1e-6)
    assert openmatch_losses(logits_lb, ova_lb, y, u1, u1)["socr"].item() == pytest.approx(0.0, abs=1e-7)


def test_fixmatch_on_selected_masks_and_normalises_by_hand():
    logits_w = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 0.1]], requires_grad=True)
    logits_s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]], requires_grad=True)
    selected = torch.tensor([True, False, True])
    loss, used = fixmatch_on_selected(logits_w, logits_s, selected, p_cutoff=0.6)
    # image 0: pseudo-label 0 from the WEAK view (conf 0.95), CE of the strong view = softplus(1);
    # image 1 is not selected; image 2 is selected but below the cutoff (conf 0.525): counts in the denominator
    assert used.tolist() == [True, False, False]
    assert loss.item() == pytest.approx(math.log1p(math.e) / 2, abs=1e-6)
    loss.backward()
    assert logits_w.grad is None  # the pseudo-label is a fixed target
    assert logits_s.grad[1].abs().sum() == 0 and logits_s.grad[2].abs().sum() == 0
    none, _ = fixmatch_on_selected(logits_w, logits_s, torch.zeros(3, dtype=torch.bool), p_cutoff=0.0)
    assert none.item() == 0.0


def test_schedule_maps_openmatch_epochs_to_iterations():
    assert resolve_start_fix(-1, 2**19) == 10 * 1024  # OP_Match: epoch 10 of 512 x 1024 iterations
    assert resolve_start_fix(-1, 500) == 10 and resolve_start_fix(7, 500) == 7
    assert resolve_select_interval(-1, 1000, 32) == 32  # one pass over 1000 unlabeled images, 32 per step
    assert resolve_select_interval(5, 1000, 32) == 5
    with pytest.raises(ConfigError, match="start_fix"):
        resolve_start_fix(-2, 100)
    due = [it for it in range(20) if OpenMatch.selection_due(SimpleNamespace(start_fix=4, select_interval=5), it)]
    assert due == [4, 9, 14, 19]


def test_defaults_are_the_papers_and_bad_values_fail_early():
    a = build_config(["--algorithm", "openmatch"])
    assert (a.lambda_ova, a.lambda_em, a.lambda_socr, a.lambda_fix, a.p_cutoff, a.T, a.select_threshold) == (
        1.0,
        0.1,
        0.5,
        1.0,
        0.0,
        1.0,
        0.5,
    )
    assert (a.start_fix, a.select_interval) == (-1, -1)
    with pytest.raises(ConfigError, match="select_threshold"):
        build_config(["--algorithm", "openmatch", "--select_threshold", "1.5"])


def test_second_weak_view_items():
    from usb_cfsg.datasets.torch_dataset import OpenSetDataset
    from usb_cfsg.datasets.transforms import build_transforms

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(2, 40, 40, 3), dtype=np.uint8)
    weak, strong, _ = build_transforms(32, 0.5, (0.5,) * 3, (0.5,) * 3)  # 64 px resize, 32 px random crops
    ulb = OpenSetDataset("openmatch", images, [0, 3], 2, weak, is_ulb=True, strong_transform=strong)
    lb = OpenSetDataset("openmatch", images, [0, 1], 2, weak)
    assert "x_ulb_w2" not in ulb[0] and "x_lb_w2" not in lb[0]
    ulb.second_weak_view = lb.second_weak_view = True
    torch.manual_seed(0)
    item = ulb[1]
    assert set(item) == {"idx_ulb", "x_ulb_w", "x_ulb_w2", "x_ulb_s", "y_ulb"} and item["y_ulb"] == 3
    assert item["x_ulb_w"].shape == item["x_ulb_w2"].shape == (3, 32, 32)
    assert not torch.equal(item["x_ulb_w"], item["x_ulb_w2"])  # two independent random crops
    assert set(lb[0]) == {"idx_lb", "x_lb", "x_lb_w2", "y_lb"}


@pytest.mark.slow
def test_openmatch_through_train_py_with_exact_resume(cub_root, tmp_path, monkeypatch):
    common = dict(iters=8, num_eval_iter=4, num_log_iter=2, start_fix=2, select_interval=3)
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "straight", algorithm="openmatch", **common)) == 0
    run = tmp_path / "straight"
    log = (run / "log.txt").read_text()
    scalars = tb_scalars(run)
    for key in (
        "train/ce_loss",
        "train/ova_loss",
        "train/em_loss",
        "train/socr_loss",
        "train/fix_loss",
        "train/selected_ratio",
    ):
        assert key in scalars, key
    assert scalars["train/fix_loss"][0] == 0.0 and scalars["train/selected_ratio"][0] == 0.0  # step 1 < start_fix
    assert "as inliers after iteration 2" in log and "as inliers after iteration 5" in log
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["algorithm"] == "openmatch" and ckpt["it"] == 8
    assert ckpt["extra"]["selected"].dtype == torch.bool and ckpt["extra"]["selection_it"] == 5
    assert "ova.fc.weight" in ckpt["model"] and "ova.fc.bias" not in ckpt["model"]  # OVA head without bias
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["primary_score"] == "ova" and set(metrics["scores"]) >= {"ova", "msp"}

    # interrupted at iteration 4 (after the selection at 2), resumed: the selection comes back from the checkpoint
    original = OpenMatch.train_step

    @functools.wraps(original)
    def stop_at_4(self, *args, **kwargs):
        if self.it == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenMatch, "train_step", stop_at_4)
    # train.py answers Ctrl-C with one line and exit status 130
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "half", algorithm="openmatch", **common)) == 130
    monkeypatch.setattr(OpenMatch, "train_step", original)
    half = str(tmp_path / "half" / "latest_model.pth")
    assert safe_load(half)["it"] == 4
    assert (
        train.cli(
            tiny_run_argv(
                cub_root, str(tmp_path), "half", algorithm="openmatch", resume="true", load_path=half, **common
            )
        )
        == 0
    )
    again = safe_load(str(tmp_path / "half" / "latest_model.pth"))
    assert torch.equal(again["extra"]["selected"], ckpt["extra"]["selected"])
    for name, tensor in ckpt["model"].items():
        assert torch.equal(tensor, again["model"][name]), f"model.{name} differs after resume"
