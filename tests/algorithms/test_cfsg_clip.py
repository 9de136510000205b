"""cfsg_clip through train.py: 40 iterations end to end, logged diagnostics, prototypes in checkpoints."""

import json

import torch
from PIL import Image

import eval as eval_cli
import train
from tests.conftest import tiny_run_argv
from usb_cfsg.algorithms import get_algorithm_class
from usb_cfsg.config import build_config
from usb_cfsg.engine.checkpoint import safe_load


def test_every_switch_is_a_config_key():
    args = build_config(
        [
            "--algorithm",
            "cfsg_clip",
            "--use_sfm",
            "false",
            "--vsi_topk",
            "2",
            "--ood_score",
            "ova",
            "--closed_head",
            "fine",
            "--sfm_dense",
            "tokens",
            "--lambda_fix",
            "0.5",
        ]
    )
    assert (args.use_sfm, args.vsi_topk, args.ood_score, args.closed_head, args.sfm_dense, args.lambda_fix) == (
        False,
        2,
        "ova",
        "fine",
        "tokens",
        0.5,
    )
    names = {a.name.lstrip("-") for a in get_algorithm_class("cfsg_clip").get_argument()}
    assert {
        "num_tuned_blocks",
        "sfm_keep_ratio",
        "sfm_temperature",
        "sfm_local_weight",
        "sfm_dense",
        "text_encoder",
        "vsi_topk",
        "proto_momentum",
        "lambda_ova",
        "lambda_em",
        "lambda_socr",
        "lambda_fix",
        "p_cutoff",
        "ood_threshold",
        "start_fix",
        "ood_score",
        "use_sfm",
        "use_vsi",
        "closed_head",
        "mcm_temperature",
        "sfm_posterior_scale",
        "ova_bias",
        "ova_views",
    } <= names


def test_cfsg_clip_40_iterations_and_prototype_round_trip(cub_root, tmp_path):
    argv = tiny_run_argv(
        cub_root,
        str(tmp_path),
        "cfsg",
        algorithm="cfsg_clip",
        iters=40,
        num_eval_iter=20,
        num_log_iter=10,
        text_encoder="minilm",
        zs_weight=0.0,  # minilm class embeddings: no zero-shot classifier to keep
        p_cutoff=0.5,
        start_fix=10,
        relevance_dir=str(tmp_path / "rel"),
    )
    assert train.cli(argv) == 0
    run = tmp_path / "cfsg"
    # relevance overlays of the same eval images after each evaluation and at the end
    for tag in ("iter_20", "iter_40", "final"):
        pngs = sorted(p.name for p in (tmp_path / "rel" / tag).glob("*.png"))
        assert len(pngs) == 6 and pngs[0].startswith("000_"), (tag, pngs)  # 3 seen classes x 2 test images
    width, height = Image.open(tmp_path / "rel" / "final" / pngs[0]).size
    assert width >= 64 and height >= 64  # a figure of the 64 x 64 net input (plus colour bar and title)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"]  # every logged term, per step
    for key in (
        "train/ce_coarse",
        "train/ce_fine",
        "train/ova_loss",
        "train/em_loss",
        "train/socr_loss",
        "train/fix_loss",
        "train/util_ratio",
        "train/id_ratio",
        "train/id_precision",
        "train/id_recall",
        "eval/top-1-acc",
    ):
        assert key in logged, key
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["it"] == 40 and ckpt["algorithm"] == "cfsg_clip"
    model, ema = ckpt["model"], ckpt["ema_model"]
    assert model["prototypes.initialized"].all()  # every seen class has labeled images, updated each step
    assert torch.equal(model["prototypes.mu"], ema["prototypes.mu"])  # the EMA model gets them too
    assert model["text.raw"].shape == (3, 384) and "text.proj.weight" in model
    assert len(ckpt["class_names"]) == 3

    # the open-set evaluation reports every CFSG score, headline = ood_score (default energy)
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["algorithm"] == "cfsg_clip" and metrics["primary_score"] == "energy"
    assert list(metrics["scores"]) == ["ova", "mcm", "glmcm", "fused", "msp", "energy"]
    # eval.py reproduces it from the checkpoint alone and draws relevance maps of the eval images
    assert (
        eval_cli.cli(
            [
                "--load_path",
                str(run / "latest_model.pth"),
                "--out_dir",
                str(tmp_path / "ev"),
                "--relevance-dir",
                str(tmp_path / "rel_eval"),
            ]
        )
        == 0
    )
    again_metrics = json.loads((tmp_path / "ev" / "openset_metrics.json").read_text())
    assert {k: again_metrics[k] for k in ("closed_acc", "auroc", "scores")} == {
        k: metrics[k] for k in ("closed_acc", "auroc", "scores")
    }
    assert len(list((tmp_path / "rel_eval" / "eval").glob("*.png"))) == 6

    # the prototypes come back with the checkpoint: the fine branch of the net eval.py rebuilt used them
    # (the same metrics above), and a net loaded from the file holds exactly the saved ones
    from usb_cfsg.engine.checkpoint import load_state_strict
    from usb_cfsg.nets import BUILDERS

    net = BUILDERS["clip_tiny"](
        num_classes=3,
        pretrained="none",
        img_size=64,
        head="cfsg",
        num_tuned_blocks=4,
        class_names=ckpt["class_names"],
        text_encoder="minilm",
    )
    assert not net.prototypes.initialized.any()
    load_state_strict(net, model, "model", "latest_model.pth")
    assert torch.equal(net.prototypes.mu, model["prototypes.mu"]) and net.prototypes.initialized.all()


# ------------------------------------------------------------------ train_step with controlled outputs
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from argparse import Namespace  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.engine.test_training import ROOT  # noqa: E402
from usb_cfsg.algorithms.cfsg_clip import _split  # noqa: E402
from usb_cfsg.engine.launch import free_port  # noqa: E402
from usb_cfsg.engine.plugin import plugin_class  # noqa: E402
from usb_cfsg.errors import ConfigError  # noqa: E402
from usb_cfsg.modules import ClassPrototypes, ova_consistency, ova_entropy, ova_loss  # noqa: E402
from usb_cfsg.nets.backbone import unwrap  # noqa: E402

K, D = 4, 3


class ControlledNet(torch.nn.Module):
    """Stands in for the CFSG net: image i (x = [[i]]) gets row i of fixed output tables.

    Logits are parameters (so the losses' gradients can be inspected per row); ``score_ova`` and
    ``feat_local`` are fixed; the prototypes are the real module.
    """

    def __init__(self, logits, logits_ova, score_ova, feat_local):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))
        self.logits_ova = torch.nn.Parameter(torch.as_tensor(logits_ova, dtype=torch.float32))
        self.register_buffer("score_ova", torch.as_tensor(score_ova, dtype=torch.float32))
        self.register_buffer("feat_local", torch.as_tensor(feat_local, dtype=torch.float32))
        self.prototypes = ClassPrototypes(K, D, momentum=0.5)

    def forward(self, x, **kwargs):
        i = x.view(-1).long()
        logits = self.logits[i]
        return {
            "logits": logits,
            "logits_coarse": logits,
            "logits_fine": logits,
            "logits_ova": self.logits_ova[i],
            "feat": self.feat_local[i],
            "feat_local": self.feat_local[i],
            "score_ova": self.score_ova[i],
        }


def _peaked(cls, conf):
    """Logits over K classes whose softmax gives ``conf`` to class ``cls`` and spreads the rest evenly."""
    rest = (1 - conf) / (K - 1)
    return [float(np.log(conf if k == cls else rest)) for k in range(K)]


def controlled_step_setup(it=10, start_fix=0, ova_views="weak_weak", p_cutoff=0.95, ood_threshold=0.5):
    """A cfsg_clip instance around a ControlledNet with 2 labeled and 4 unlabeled images.

    Rows: 0-1 labeled (classes 0, 0); 2-5 weak views of unlabeled u0..u3; 6-9 strong views;
    10-13 second weak views. Unlabeled images (weak view):
      u0: inlier (score 0.1), confident (0.99) on class 1   -> selected
      u1: inlier (0.2), unsure (0.6) on class 3              -> not selected (confidence)
      u2: outlier (0.9), confident (0.99) on class 2         -> not selected (OVA says unknown)
      u3: outlier (0.8), unsure (0.5) on class 2             -> not selected
    The strong views predict other classes (3, 0, 1, 1), so pseudo-labels from them would differ.
    """
    weak = [(1, 0.99), (3, 0.6), (2, 0.99), (2, 0.5)]
    strong = [(3, 0.97), (0, 0.9), (1, 0.99), (1, 0.9)]
    logits = (
        [_peaked(0, 0.7), _peaked(0, 0.8)]
        + [_peaked(*w) for w in weak]
        + [_peaked(*s) for s in strong]
        + [_peaked(*w) for w in weak]
    )
    g = torch.Generator().manual_seed(0)
    logits_ova = torch.randn(14, 2, K, generator=g)
    score_ova = [0.0, 0.0, 0.1, 0.2, 0.9, 0.8] + [0.5] * 8
    feat_local = torch.randn(14, D, generator=g)
    net = ControlledNet(logits, logits_ova, score_ova, feat_local)
    alg = object.__new__(plugin_class("cfsg_clip"))
    alg.model, alg.amp_cm, alg.it, alg.distributed, alg.num_classes = net, nullcontext, it, False, K
    alg.lambda_ova, alg.lambda_em, alg.lambda_socr, alg.lambda_fix = 0.0, 0.0, 0.0, 1.0
    alg.ova_log_eps = 1e-8
    alg.p_cutoff, alg.ood_threshold, alg.start_fix, alg.ova_views = p_cutoff, ood_threshold, start_fix, ova_views
    ids = torch.arange(14, dtype=torch.float32).view(-1, 1)
    batch = dict(
        x_lb=ids[0:2],
        y_lb=torch.tensor([0, 0]),
        x_ulb_w=ids[2:6],
        x_ulb_s=ids[6:10],
        x_ulb_w2=ids[10:14],
        y_ulb=torch.tensor([1, 3, 7, 2]),
    )
    return alg, net, batch


def test_fixmatch_term_uses_inlier_and_confident_samples_with_weak_view_pseudo_labels():
    alg, net, batch = controlled_step_setup()
    out, log = alg.train_step(**batch)
    # only u0 is selected: the inlier condition drops u2 although it is confident
    assert log["train/util_ratio"] == pytest.approx(0.25) and log["train/id_ratio"] == pytest.approx(0.5)
    strong = net.logits[6:10].detach()
    expected_fix = F.cross_entropy(strong[:1], torch.tensor([1])).item() / 4  # pseudo-label 1 from u0's WEAK view
    assert log["train/fix_loss"] == pytest.approx(expected_fix, rel=1e-5)
    out["loss"].backward()
    grad = net.logits.grad
    # the FixMatch gradient reaches the strong view of u0 only, towards the weak view's class
    assert grad[7:10].abs().sum() == 0 and grad[2:6].abs().sum() == 0  # no gradient through the pseudo-labels
    torch.testing.assert_close(grad[6], (strong[0].softmax(0) - F.one_hot(torch.tensor(1), K)) / 4)
    # diagnostics against the true labels: of the 2 inliers by OVA (u0, u1) both are seen classes
    assert log["train/id_precision"] == 1.0 and log["train/id_recall"] == pytest.approx(2 / 3)


def test_prototypes_are_updated_from_labeled_and_selected_samples_only():
    alg, net, batch = controlled_step_setup()
    alg.train_step(**batch)
    assert net.prototypes.initialized.tolist() == [True, True, False, False]  # u1 (class 3), u2 (class 2) not used
    feats = F.normalize(net.feat_local, dim=-1)
    torch.testing.assert_close(net.prototypes.mu[0], F.normalize(feats[0] + feats[1], dim=0))  # labeled class 0
    torch.testing.assert_close(net.prototypes.mu[1], feats[2])  # u0's WEAK view local feature, pseudo-label 1
    # vsi_cues: labeled keeps every unlabeled sample out of the prototypes, selected or not
    alg, net, batch = controlled_step_setup()
    alg.vsi_cues = "labeled"
    alg.train_step(**batch)
    assert net.prototypes.initialized.tolist() == [True, False, False, False]


def test_start_fix_delays_the_fixmatch_term_and_unlabeled_prototype_updates():
    alg, net, batch = controlled_step_setup(it=4, start_fix=5)
    out, log = alg.train_step(**batch)
    assert log["train/fix_loss"] == 0.0 and log["train/util_ratio"] == 0.0
    out["loss"].backward()
    assert net.logits.grad[6:10].abs().sum() == 0
    assert net.prototypes.initialized.tolist() == [True, False, False, False]  # labeled only
    alg.it = 5  # the first step with the FixMatch term
    out, log = alg.train_step(**batch)
    assert log["train/fix_loss"] > 0 and net.prototypes.initialized.tolist() == [True, True, False, False]


@pytest.mark.parametrize("ova_views", ["weak_weak", "weak_strong"])
def test_ova_views_pick_the_second_view_of_the_unlabeled_ova_losses(ova_views):
    alg, net, batch = controlled_step_setup(ova_views=ova_views)
    _, log = alg.train_step(**batch)
    ova = net.logits_ova.detach()
    second = ova[10:14] if ova_views == "weak_weak" else ova[6:10]
    assert log["train/em_loss"] == pytest.approx(((ova_entropy(ova[2:6]) + ova_entropy(second)) / 2).item(), rel=1e-5)
    assert log["train/socr_loss"] == pytest.approx(ova_consistency(ova[2:6], second).item(), rel=1e-5)
    if ova_views == "weak_weak":
        batch.pop("x_ulb_w2")
        with pytest.raises(ValueError, match="x_ulb_w2"):
            alg.train_step(**batch)


def test_unlabeled_items_carry_a_second_weak_view_when_ova_views_is_weak_weak(cub_root):
    from usb_cfsg.config import build_config

    for views, expected in (("weak_weak", True), ("weak_strong", False)):
        alg = object.__new__(plugin_class("cfsg_clip"))  # only what set_dataset reads
        alg.args = build_config(tiny_run_argv(cub_root, "/tmp", "x", algorithm="cfsg_clip", ova_views=views))
        alg.algorithm, alg.record_split, alg.net_builder = "cfsg_clip", False, None
        datasets = alg.set_dataset()
        item = datasets["train_ulb"][0]
        assert ("x_ulb_w2" in item) == expected, views
        assert {"x_ulb_w", "x_ulb_s", "y_ulb"} <= set(item)
        assert "x_lb_w2" not in datasets["train_lb"][0]  # the labeled loss uses one view
        if expected:
            assert item["x_ulb_w2"].shape == item["x_ulb_w"].shape


# ------------------------------------------------------------------------- unknown scores
def _outputs():
    return {
        "score_ova": np.array([0.1, 0.5, 0.9]),
        "score_mcm": np.array([0.70, 0.72, 0.74]),
        "score_glmcm": np.array([0.740, 0.745, 0.749]),
        "logits": np.array([[2.0, 0.0], [1.0, 1.0], [-3.0, 5.0]]),
    }


def test_fused_score_without_calibration_is_the_plain_mean():
    cls = get_algorithm_class("cfsg_clip")
    scores, primary = cls.compute_unknown_scores(_outputs(), Namespace(ood_score="fused"))
    assert primary == "fused" and list(scores) == ["ova", "mcm", "glmcm", "fused", "msp", "energy"]
    # energy = -logsumexp of the closed logits, by hand
    np.testing.assert_allclose(
        scores["energy"], [-(2 + np.log(1 + np.exp(-2))), -(1 + np.log(2)), -(5 + np.log(1 + np.exp(-8)))], rtol=1e-12
    )
    np.testing.assert_allclose(scores["fused"], (_outputs()["score_ova"] + _outputs()["score_glmcm"]) / 2)


def test_fused_score_maps_ova_and_glmcm_with_the_calibrated_ranges():
    cls = get_algorithm_class("cfsg_clip")
    calibration = {
        "ranges": {"ova": [0.0, 1.0], "glmcm": [0.740, 0.750], "mcm": [0.0, 1.0]},
        "thresholds": {},
        "source": "train_ulb",
    }
    scores, _ = cls.compute_unknown_scores(_outputs(), Namespace(ood_score="glmcm"), calibration)
    np.testing.assert_allclose(scores["fused"], [(0.1 + 0.0) / 2, (0.5 + 0.5) / 2, (0.9 + 0.9) / 2], atol=1e-9)
    np.testing.assert_allclose(scores["glmcm"], _outputs()["score_glmcm"])  # the raw scores stay raw
    with pytest.raises(ValueError, match="glmcm"):
        cls.compute_unknown_scores(_outputs(), Namespace(ood_score="fused"), {"ranges": {"ova": [0, 1]}})


def test_new_switches_are_config_keys_with_their_documented_defaults():
    from usb_cfsg.config import build_config

    args = build_config(["--algorithm", "cfsg_clip"])
    assert (args.mcm_temperature, args.ova_bias, args.ova_views, args.sfm_posterior_scale) == (
        1.0,
        False,
        "weak_strong",
        100.0,
    )
    spec = get_algorithm_class("cfsg_clip").net_spec(args)[1]
    assert spec["mcm_temperature"] == 1.0 and spec["ova_bias"] is False and spec["sfm_posterior_scale"] == 100.0
    with pytest.raises((ConfigError, SystemExit, ValueError)):
        build_config(["--algorithm", "cfsg_clip", "--ova_views", "strong_strong"])


# --------------------------------------------------------------------- 2 processes (gloo)
_DUMP_SCRIPT = """
import sys
import torch
sys.path.insert(0, {root!r})
import train
from usb_cfsg.algorithms.cfsg_clip import CFSGCLIP
from usb_cfsg.nets.backbone import unwrap

out_dir, local_sums = sys.argv[1], []
update, run = CFSGCLIP._update_prototypes, CFSGCLIP.train


def spy(self, feats, labels, mask):  # this process's own per-class sums, before the all-reduce
    local_sums.append(unwrap(self.model).prototypes.class_sums(feats.detach().float(), labels, mask))
    update(self, feats, labels, mask)


def train_and_dump(self):
    run(self)
    protos = unwrap(self.model).prototypes
    torch.save({{"mu": protos.mu.clone(), "initialized": protos.initialized.clone(), "local": local_sums}},
               f"{{out_dir}}/rank{{self.args.rank}}.pt")


CFSGCLIP._update_prototypes, CFSGCLIP.train = spy, train_and_dump
sys.exit(train.cli(sys.argv[2:]))
"""


def test_two_processes_end_with_identical_prototypes(cub_root, tmp_path):
    script = tmp_path / "run_and_dump.py"
    script.write_text(_DUMP_SCRIPT.format(root=ROOT))
    argv = tiny_run_argv(
        cub_root,
        str(tmp_path),
        "ddp",
        algorithm="cfsg_clip",
        iters=3,
        num_eval_iter=3,
        use_tensorboard="false",
        text_encoder="minilm",
        zs_weight=0.0,
        p_cutoff=0.0,
        ood_threshold=1.0,
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        str(tmp_path),
        *argv,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["local"]) == len(r1["local"]) == 3
    # each process saw other images (its own shard) ...
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(r0["local"], r1["local"]))
    # ... and both apply the summed update: identical prototypes, every seen class set
    assert torch.equal(r0["mu"], r1["mu"]) and torch.equal(r0["initialized"], r1["initialized"])
    assert r0["initialized"].all()


# ------------------------------------------------- train_step on a real tiny net: the previous computation
def previous_train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s, x_ulb_w2=None, y_ulb=None):
    """cfsg_clip's train_step as of commit 09a09fe, verbatim: the reference computation."""
    num_lb = y_lb.shape[0]
    views = [x_lb, x_ulb_w, x_ulb_s]
    if self.ova_views == "weak_weak":
        if x_ulb_w2 is None:
            raise ValueError(
                "ova_views: weak_weak needs a second weak view of the unlabeled images (x_ulb_w2), "
                "which the dataset did not provide (set_dataset turns OpenSetDataset.second_weak_view "
                "on for train_ulb); or set ova_views: weak_strong"
            )
        views.append(x_ulb_w2)
    with self.amp_cm():
        # the labeled rows' losses use the coarse and fine heads alone: no zero-shot forward for them
        out = self.model(torch.cat(views), zs_skip=num_lb)
        parts = {k: _split(v, num_lb, len(views) - 1) for k, v in out.items()}
        lb, w, s = ({k: p[i] for k, p in parts.items()} for i in range(3))
        # the second view of the OVA losses: another weak view (OpenMatch) or the strong view
        o2 = {k: p[3] for k, p in parts.items()} if self.ova_views == "weak_weak" else s

        ce_coarse = F.cross_entropy(lb["logits_coarse"].float(), y_lb)
        ce_fine = F.cross_entropy(lb["logits_fine"].float(), y_lb)
        l_ova = ova_loss(lb["logits_ova"].float(), y_lb, self.ova_log_eps)
        sup_loss = ce_coarse + ce_fine + self.lambda_ova * l_ova

        eps = self.ova_log_eps
        l_em = (ova_entropy(w["logits_ova"].float(), eps) + ova_entropy(o2["logits_ova"].float(), eps)) / 2
        l_socr = ova_consistency(w["logits_ova"].float(), o2["logits_ova"].float())

        with torch.no_grad():
            logits_w = w["logits"].detach().float()
            prior = getattr(unwrap(self.model), "zero_shot", None)
            if prior is not None and prior.mode == "weights" and "logits_zs" in w:
                logits_w = prior.mix(logits_w, w["logits_zs"].float())  # the ensemble's pseudo-labels
            probs_w = torch.softmax(logits_w, dim=1)
            conf, pseudo = probs_w.max(dim=1)
            inlier = w["score_ova"] < self.ood_threshold
            mask = inlier & (conf >= self.p_cutoff)
        fix_on = self.it >= self.start_fix
        if fix_on:
            ce_s = F.cross_entropy(s["logits"].float(), pseudo, reduction="none")
            l_fix = (ce_s * mask.float()).mean()
        else:
            l_fix = torch.zeros((), device=x_lb.device)
        unsup_loss = self.lambda_em * l_em + self.lambda_socr * l_socr + self.lambda_fix * l_fix
        total_loss = sup_loss + unsup_loss

    with torch.no_grad():
        feats = torch.cat((lb["feat_local"], w["feat_local"]))
        labels = torch.cat((y_lb, pseudo))
        sel = torch.cat((torch.ones_like(y_lb, dtype=torch.bool), mask if fix_on else torch.zeros_like(mask)))
        self._update_prototypes(feats, labels, sel)

    feat_dict = {"x_lb": lb["feat"], "x_ulb_w": w["feat"], "x_ulb_s": s["feat"]}
    out_dict = self.process_out_dict(loss=total_loss, feat=feat_dict)
    log = dict(
        sup_loss=sup_loss.item(),
        ce_coarse=ce_coarse.item(),
        ce_fine=ce_fine.item(),
        ova_loss=l_ova.item(),
        em_loss=l_em.item(),
        socr_loss=l_socr.item(),
        fix_loss=float(l_fix.item()),
        unsup_loss=unsup_loss.item(),
        total_loss=total_loss.item(),
        util_ratio=float(mask.float().mean().item()) if fix_on else 0.0,
        id_ratio=float(inlier.float().mean().item()),
    )
    if y_ulb is not None:
        log.update(self.selection_diagnostics(inlier, y_ulb))
    log_dict = self.process_log_dict(**log)
    return out_dict, log_dict


def _tiny_cfsg_step(model, it: int, ova_views: str, start_fix: int, p_cutoff: float, ood_threshold: float):
    alg = object.__new__(plugin_class("cfsg_clip"))
    alg.model, alg.amp_cm, alg.it, alg.distributed, alg.num_classes = model, nullcontext, it, False, K
    alg.lambda_ova, alg.lambda_em, alg.lambda_socr, alg.lambda_fix = 1.0, 0.7, 0.5, 1.0
    alg.ova_log_eps = 1e-8
    alg.p_cutoff, alg.ood_threshold, alg.start_fix, alg.ova_views = p_cutoff, ood_threshold, start_fix, ova_views
    return alg


def _tiny_cfsg_net(zs_mode: str):
    from usb_cfsg.nets import BUILDERS

    torch.manual_seed(0)
    return BUILDERS["clip_tiny"](
        num_classes=K,
        pretrained="none",
        img_size=64,
        head="cfsg",
        num_tuned_blocks=2,
        class_names=["Shirt", "Coat", "Bag", "Sandal"],
        text_encoder="clip",
        zs_weight=0.5,
        zs_mode=zs_mode,
        sfm_dense="glmcm",
    )


def _saved_bytes(fn):
    """(result of fn(), bytes of the distinct tensors autograd saved for backward while it ran)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())


@pytest.mark.parametrize(
    "ova_views,it,start_fix,selected,zs_mode",
    [
        ("weak_strong", 3, 0, "all", "output"),
        ("weak_strong", 3, 0, "one", "output"),
        ("weak_strong", 3, 0, "none", "output"),
        ("weak_weak", 3, 0, "one", "output"),
        ("weak_strong", 3, 10, "all", "output"),
        ("weak_strong", 3, 0, "one", "weights"),
    ],
)
def test_the_cheaper_step_gives_the_previous_losses_gradients_and_prototypes(
    ova_views, it, start_fix, selected, zs_mode
):
    """No autograd through the weak views' coarse branch, the zero-shot copy on the selected strong views only.

    The reference is the previous train_step, verbatim: the same losses, gradients and prototypes up
    to float rounding (the rows run in other batches), and fewer tensors saved for backward.
    """
    import copy

    net = _tiny_cfsg_net(zs_mode)
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    batch = dict(
        x_lb=torch.randn(2, 3, 64, 64, generator=g),
        y_lb=torch.tensor([0, 2]),
        x_ulb_w=torch.randn(3, 3, 64, 64, generator=g),
        x_ulb_s=torch.randn(3, 3, 64, 64, generator=g),
        x_ulb_w2=torch.randn(3, 3, 64, 64, generator=g),
        y_ulb=torch.tensor([1, 3, 5]),
    )
    p_cutoff, ood_threshold = {"all": (0.0, 2.0), "none": (1.5, 2.0)}.get(selected, (0.0, None))
    if ood_threshold is None:  # between the lowest and the second lowest unknown score: one image selected
        with torch.no_grad():
            scores = net(batch["x_ulb_w"])["score_ova"].sort().values
        ood_threshold = float(scores[:2].mean())
    calls = []
    hook = net.zero_shot.tail.tuned_blocks[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    (out, log), saved = _saved_bytes(
        lambda: _tiny_cfsg_step(net, it, ova_views, start_fix, p_cutoff, ood_threshold).train_step(**batch)
    )
    hook.remove()
    (out_ref, log_ref), saved_ref = _saved_bytes(
        lambda: previous_train_step(_tiny_cfsg_step(ref, it, ova_views, start_fix, p_cutoff, ood_threshold), **batch)
    )
    assert saved < saved_ref  # the weak views' coarse branch keeps nothing for backward
    fix_on = start_fix <= it
    expected_util = {"all": 1.0, "one": 1 / 3, "none": 0.0}[selected] if fix_on else 0.0
    assert log["train/util_ratio"] == pytest.approx(expected_util)
    # the zero-shot copy ran on the 3 weak views, then (output mode) on the selected strong views only
    assert calls == [3] + ([round(3 * expected_util)] if zs_mode == "output" and expected_util > 0 else [])
    for key in log_ref:
        assert log[key] == pytest.approx(log_ref[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    out["loss"].backward()
    out_ref["loss"].backward()
    ref_params = dict(ref.named_parameters())
    graded = 0
    for name, p in net.named_parameters():
        q = ref_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)  # float rounding
            graded += int(p.grad.abs().sum() > 0)
    assert graded > 10  # the tuned blocks, projection, heads, VSI and OVA head all received gradients
    torch.testing.assert_close(net.prototypes.mu, ref.prototypes.mu)
    assert net.prototypes.initialized.tolist() == ref.prototypes.initialized.tolist()


class PriorDilutedNet(ControlledNet):
    """As ControlledNet, with closed ``logits`` a third of the trained heads' (as a mark-blind prior's ensemble)."""

    def forward(self, x, **kwargs):
        out = super().forward(x, **kwargs)
        return {**out, "logits": out["logits"] / 3}

    def trained_logits(self, out):
        return (out["logits_coarse"] + out["logits_fine"]) / 2


@pytest.mark.parametrize("pseudo_labels,util", [("ensemble", 0.0), ("trained", 0.25)])
def test_pseudo_labels_trained_takes_confidence_from_the_heads_without_the_prior(pseudo_labels, util):
    alg, net, batch = controlled_step_setup()
    diluted = PriorDilutedNet(net.logits.detach(), net.logits_ova.detach(), net.score_ova, net.feat_local)
    alg.model, alg.pseudo_labels = diluted, pseudo_labels
    _, log = alg.train_step(**batch)
    # u0 is 99% sure by the trained heads, far less by the diluted ensemble: only "trained" selects it
    assert log["train/util_ratio"] == pytest.approx(util)


def test_cfsg_net_trained_logits_are_its_closed_prediction_without_the_prior():
    from usb_cfsg.nets import BUILDERS

    def net(**kw):
        torch.manual_seed(0)
        return BUILDERS["clip_tiny"](
            num_classes=3, pretrained="none", img_size=32, head="cfsg", num_tuned_blocks=1,
            class_names=["a", "b", "c"], text_encoder="minilm", **kw,
        ).eval()  # fmt: skip

    x = torch.randn(2, 3, 32, 32)
    for closed_head in ("ensemble", "fine"):
        model = net(closed_head=closed_head)
        with torch.no_grad():
            out = model(x)
        torch.testing.assert_close(model.trained_logits(out), out["logits"])  # zs_weight 0: no prior
