"""End-to-end training through train.py on CPU: USB's fixmatch, exact resume, 2-process gloo."""

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.engine.checkpoint import safe_load
from usb_cfsg.engine.hooks import ThroughputHook
from usb_cfsg.engine.launch import free_port
from usb_cfsg.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_fixmatch_20_iterations_end_to_end(cub_root, tmp_path):
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "fm", iters=20)) == 0
    run = tmp_path / "fm"
    for name in ("config.yaml", "log.txt", "latest_model.pth", "model_best.pth", "split.json"):
        assert (run / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["algorithm"] == "fixmatch" and cfg["net"] == "clip_tiny" and cfg["pretrained"] is None
    ckpt = safe_load(str(run / "latest_model.pth"))
    assert ckpt["it"] == 20 and ckpt["class_names"] and len(ckpt["class_names"]) == 3
    log = (run / "log.txt").read_text()
    assert "RANDOM INITIALISATION" in log
    assert re.search(
        r"\] it 5/20 \| loss [\d.]+ \(sup [\d.]+, unsup [\d.]+\) \| lr [\d.e-]+ \| [\d.]+ img/s \| "
        r"ETA \d+:\d\d:\d\d\n",
        log,
    )


def test_eval_subset_in_training_and_the_full_test_set_at_the_end(cub_root, tmp_path):
    argv = tiny_run_argv(cub_root, str(tmp_path), "sub", iters=4, num_eval_iter=2, num_log_iter=2, eval_subset=6)
    assert train.cli(argv) == 0
    run = tmp_path / "sub"
    log = (run / "log.txt").read_text()
    # 6 of the 12 test images (one per class), 3 of the 6 seen-class eval images
    assert "eval_subset: evaluations during training use 6 of the 12 open-set test images (3 of 6" in log
    assert re.search(r"it 2/4 \| eval top-1 on eval_subset 3/6 [\d.]+ \(best", log)
    assert "it 2/4 | open-set test (eval_subset 6/12 images) (msp): auroc" in log
    assert (
        "final evaluation on all 12 open-set test images (evaluations during training used the eval_subset of 6)" in log
    )
    metrics = yaml.safe_load((run / "openset_metrics.json").read_text())
    assert (metrics["num_test_seen"], metrics["num_test_unseen"]) == (6, 6)  # the full test set
    split = yaml.safe_load((run / "split.json").read_text())
    assert len(split["eval_subset"]["test_open"]) == 6 and len(split["eval_subset"]["eval"]) == 3


def test_existing_run_folder_is_not_silently_replaced(cub_root, tmp_path):
    (tmp_path / "fm").mkdir()
    (tmp_path / "fm" / "precious.txt").write_text("x")
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "fm", iters=2)) == 2
    assert (tmp_path / "fm" / "precious.txt").exists()


class _Stop(Exception):
    pass


def test_resume_is_exact(cub_root, tmp_path, monkeypatch):
    common = dict(iters=8, num_eval_iter=4, num_log_iter=2)
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "straight", **common)) == 0

    original = ThroughputHook.before_train_step

    def stop_at_4(self, algorithm):
        if algorithm.it == 4:
            raise _Stop()
        original(self, algorithm)

    monkeypatch.setattr(ThroughputHook, "before_train_step", stop_at_4)
    with pytest.raises(_Stop):
        train.cli(tiny_run_argv(cub_root, str(tmp_path), "half", **common))
    monkeypatch.setattr(ThroughputHook, "before_train_step", original)
    half = str(tmp_path / "half" / "latest_model.pth")
    assert safe_load(half)["it"] == 4
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "half", resume="true", load_path=half, **common)) == 0

    a = safe_load(str(tmp_path / "straight" / "latest_model.pth"))
    b = safe_load(str(tmp_path / "half" / "latest_model.pth"))
    assert a["it"] == b["it"] == 8
    for key in ("model", "ema_model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_resume_from_bad_checkpoint_fails_loudly(cub_root, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    argv = tiny_run_argv(cub_root, str(tmp_path), "r", iters=2, resume="true", load_path=str(bad))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        from usb_cfsg.config import build_config
        from usb_cfsg.engine import main

        main(build_config(argv))
    assert train.cli(argv) == 2  # the CLI reports it as an error, never a silent restart


@pytest.mark.parametrize(
    "launcher,algorithm", [("spawn", "fixmatch"), ("spawn", "cfsg_clip"), ("torchrun", "fixmatch")]
)
def test_two_process_gloo(cub_root, tmp_path, launcher, algorithm):
    argv = tiny_run_argv(cub_root, str(tmp_path), "ddp", algorithm=algorithm, iters=4, num_eval_iter=2)
    if launcher == "spawn":  # train.py starts the processes
        cmd = [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            *argv,
            "--world_size",
            "2",
            "--multiprocessing_distributed",
            "true",
        ]
    else:  # torchrun starts them; train.py reads RANK / WORLD_SIZE / LOCAL_RANK
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            os.path.join(ROOT, "train.py"),
            *argv,
        ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "process 0/2 on cpu (gloo)" in log
    ckpt = safe_load(str(tmp_path / "ddp" / "latest_model.pth"))
    assert ckpt["it"] == 4 and ckpt["config"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved without the DDP wrapper
    assert (tmp_path / "ddp" / "openset_metrics.json").is_file()  # rank 0 evaluated and wrote the results


@pytest.mark.parametrize("algorithm", ["fixmatch", "cfsg_clip"])
def test_amp_runs_as_bf16_autocast_on_cpu(cub_root, tmp_path, algorithm):
    assert (
        train.cli(
            tiny_run_argv(
                cub_root,
                str(tmp_path),
                "amp",
                algorithm=algorithm,
                iters=4,
                num_eval_iter=2,
                num_log_iter=1,
                amp="true",
            )
        )
        == 0
    )
    log = (tmp_path / "amp" / "log.txt").read_text()
    losses = [float(v) for v in re.findall(r"\] it \d+/4 \| loss ([-\d.naif]+)", log)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = safe_load(str(tmp_path / "amp" / "latest_model.pth"))
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values() if t.is_floating_point())


def test_autocast_factory_picks_bf16_on_cpu():
    from usb_cfsg.engine.device import autocast_factory, grad_scaler

    with autocast_factory(torch.device("cpu"), True)():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not grad_scaler(torch.device("cpu"), True).is_enabled()  # no loss scaling needed for bf16


@pytest.mark.parametrize("algorithm", ["flexmatch", "freematch", "softmatch", "meanteacher", "fullysupervised"])
def test_other_usb_algorithms_train_and_report_on_cpu(cub_root, tmp_path, algorithm):
    assert (
        train.cli(
            tiny_run_argv(
                cub_root, str(tmp_path), "alg", algorithm=algorithm, iters=2, num_eval_iter=2, use_tensorboard="false"
            )
        )
        == 0
    )
    metrics = (tmp_path / "alg" / "openset_metrics.json").read_text()
    assert f'"algorithm": "{algorithm}"' in metrics and '"primary_score": "msp"' in metrics
