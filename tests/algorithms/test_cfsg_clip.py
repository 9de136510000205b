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
    args = build_config(["--algorithm", "cfsg_clip", "--use_sfm", "false", "--vsi_topk", "2", "--ood_score", "ova",
                         "--closed_head", "fine", "--sfm_dense", "tokens", "--lambda_fix", "0.5"])
    assert (args.use_sfm, args.vsi_topk, args.ood_score, args.closed_head, args.sfm_dense, args.lambda_fix) == (
        False, 2, "ova", "fine", "tokens", 0.5)
    names = {a.name.lstrip("-") for a in get_algorithm_class("cfsg_clip").get_argument()}
    assert {"num_tuned_blocks", "sfm_keep_ratio", "sfm_temperature", "sfm_local_weight", "sfm_dense", "text_encoder",
            "vsi_topk", "proto_momentum", "lambda_ova", "lambda_em", "lambda_socr", "lambda_fix", "p_cutoff",
            "ood_threshold", "start_fix", "ood_score", "use_sfm", "use_vsi", "closed_head"} <= names


def test_cfsg_clip_40_iterations_and_prototype_round_trip(cub_root, tmp_path):
    argv = tiny_run_argv(cub_root, str(tmp_path), "cfsg", algorithm="cfsg_clip", iters=40, num_eval_iter=20,
                         num_log_iter=10, text_encoder="minilm", p_cutoff=0.5, start_fix=10,
                         relevance_dir=str(tmp_path / "rel"))
    assert train.cli(argv) == 0
    run = tmp_path / "cfsg"
    # relevance overlays of the same eval images after each evaluation and at the end
    for tag in ("iter_20", "iter_40", "final"):
        pngs = sorted(p.name for p in (tmp_path / "rel" / tag).glob("*.png"))
        assert len(pngs) == 6 and pngs[0].startswith("000_"), (tag, pngs)  # 3 seen classes x 2 test images
    assert (Image.open(tmp_path / "rel" / "final" / pngs[0]).size == (64, 64))
    log = (run / "log.txt").read_text()
    for key in ("train/ce_coarse", "train/ce_fine", "train/ova_loss", "train/em_loss", "train/socr_loss",
                "train/fix_loss", "train/id_ratio", "train/id_precision", "train/id_recall", "eval/top-1-acc"):
        assert key in log, key
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["it"] == 40 and ckpt["algorithm"] == "cfsg_clip"
    model, ema = ckpt["model"], ckpt["ema_model"]
    assert model["prototypes.initialized"].all()  # every seen class has labeled images, updated each step
    assert torch.equal(model["prototypes.mu"], ema["prototypes.mu"])  # the EMA model gets them too
    assert model["text.raw"].shape == (3, 384) and "text.proj.weight" in model
    assert len(ckpt["class_names"]) == 3

    # the open-set evaluation reports every CFSG score, headline = ood_score (default fused)
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["algorithm"] == "cfsg_clip" and metrics["primary_score"] == "fused"
    assert list(metrics["scores"]) == ["ova", "mcm", "glmcm", "fused"]
    # eval.py reproduces it from the checkpoint alone and draws relevance maps of the eval images
    assert eval_cli.cli(["--load_path", str(run / "latest_model.pth"), "--out_dir", str(tmp_path / "ev"),
                         "--relevance-dir", str(tmp_path / "rel_eval")]) == 0
    again_metrics = json.loads((tmp_path / "ev" / "openset_metrics.json").read_text())
    assert {k: again_metrics[k] for k in ("closed_acc", "auroc", "scores")} == {
        k: metrics[k] for k in ("closed_acc", "auroc", "scores")}
    assert len(list((tmp_path / "rel_eval" / "eval").glob("*.png"))) == 6

    # resume from the finished run: nothing left to train, and the prototypes survive load -> save
    again = tiny_run_argv(cub_root, str(tmp_path), "cfsg", algorithm="cfsg_clip", iters=40, num_eval_iter=20,
                          num_log_iter=10, text_encoder="minilm", p_cutoff=0.5, start_fix=10, resume="true",
                          load_path=str(run / "latest_model.pth"))
    saved = str(tmp_path / "first.pth")
    (run / "latest_model.pth").rename(saved)
    again[again.index("--load_path") + 1] = saved
    assert train.cli(again) == 0
    reloaded = safe_load(str(run / "latest_model.pth"))
    assert torch.equal(reloaded["model"]["prototypes.mu"], model["prototypes.mu"])
    assert torch.equal(reloaded["ema_model"]["prototypes.mu"], ema["prototypes.mu"])
