"""Training with augment_device: cpu (views made as batched tensor operations before each step)."""

import pytest
import torch

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.engine.checkpoint import safe_load
from usb_cfsg.engine.hooks import ThroughputHook


@pytest.mark.parametrize(
    "algorithm, extra",
    [
        ("fixmatch", {}),
        pytest.param("openmatch", {}, marks=pytest.mark.slow),  # second weak views, labeled and unlabeled
        pytest.param("cfsg_clip", {"ova_views": "weak_weak"}, marks=pytest.mark.slow),
    ],
)
def test_training_runs_with_augment_device_cpu_and_the_cache(cub_root, tmp_path, algorithm, extra):
    argv = tiny_run_argv(
        cub_root,
        str(tmp_path),
        "aug",
        algorithm=algorithm,
        iters=4,
        num_eval_iter=4,
        num_log_iter=2,
        augment_device="cpu",
        cache_images="true",
        num_workers=1,
        **extra,
    )
    assert train.cli(argv) == 0
    ckpt = safe_load(str(tmp_path / "aug" / "latest_model.pth"))
    assert ckpt["it"] == 4 and ckpt["config"]["augment_device"] == "cpu"
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_openmatch_trains_with_the_cache_on_the_pil_path(cub_root, tmp_path):
    # its inlier-selection set keeps the evaluation resize that the cache takes out of d["eval"].transform
    argv = tiny_run_argv(
        cub_root, str(tmp_path), "om", algorithm="openmatch", iters=2, num_eval_iter=2, cache_images="true"
    )
    assert train.cli(argv) == 0


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_is_exact_with_augment_device_cpu(cub_root, tmp_path, monkeypatch):
    # the views are drawn from (seed, iteration, rank, view): a resumed run makes the same ones
    common = dict(iters=6, num_eval_iter=3, num_log_iter=3, augment_device="cpu")
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "straight", **common)) == 0
    original = ThroughputHook.before_train_step

    def stop_at_3(self, algorithm):
        if algorithm.it == 3:
            raise _Stop()
        original(self, algorithm)

    monkeypatch.setattr(ThroughputHook, "before_train_step", stop_at_3)
    with pytest.raises(_Stop):
        train.cli(tiny_run_argv(cub_root, str(tmp_path), "half", **common))
    monkeypatch.setattr(ThroughputHook, "before_train_step", original)
    half = str(tmp_path / "half" / "latest_model.pth")
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "half", resume="true", load_path=half, **common)) == 0
    a = safe_load(str(tmp_path / "straight" / "latest_model.pth"))
    b = safe_load(str(tmp_path / "half" / "latest_model.pth"))
    assert a["it"] == b["it"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"model.{name} differs after resume"


def test_augment_device_cuda_on_a_cpu_run_is_a_config_error(cub_root, tmp_path):
    argv = tiny_run_argv(cub_root, str(tmp_path), "bad", augment_device="cuda")
    assert train.cli(argv) == 2
