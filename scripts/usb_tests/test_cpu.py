"""semilearn on a machine without CUDA: device, timers, model placement, train.py."""

import argparse
import types

import pytest
import torch
from conftest import fixmatch_config, run_train


def test_get_device_is_the_cpu_without_cuda():
    from semilearn.core.utils import get_device

    assert get_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_timer_hook_measures_without_cuda():
    from semilearn.core.hooks.timer import TimerHook

    alg = types.SimpleNamespace(log_dict={}, optimizer=types.SimpleNamespace(param_groups=[{"lr": 0.1}]))
    hook = TimerHook()
    hook.before_run(alg)
    hook.before_train_step(alg)
    hook.after_train_step(alg)
    # the time between batches (logged as train/prefetch_time by semilearn 0.3.2, train/prefecth_time on main)
    times = [v for k, v in alg.log_dict.items() if k.startswith("train/") and k.endswith("_time")]
    assert len(times) == 1 and times[0] >= 0, alg.log_dict


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of send_model_cuda")
def test_send_model_cuda_keeps_a_cpu_model():
    from semilearn.core.utils import send_model_cuda

    model = torch.nn.Linear(2, 2)
    assert send_model_cuda(argparse.Namespace(distributed=False, gpu=None), model) is model


def test_train_py_trains_fixmatch_on_this_machine(semi_aves_root, tmp_path):
    cfg = fixmatch_config(tmp_path / "fm.yaml", semi_aves_root, tmp_path / "runs")
    proc = run_train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "fixmatch" / "latest_model.pth").is_file()
    assert "eval/top-1-acc" in proc.stderr + proc.stdout
