"""What the entry points print: --help into a closed pipe, the Ctrl-C line, commands a user can type, eval.py's
environment and stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from usb_cfsg import console
from usb_cfsg.interrupt import interrupted_message

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py"])
def test_help_into_a_closed_pipe_exits_0_without_a_traceback(script):
    """``python train.py --help | head -40``: the reader goes away before the help is written."""
    proc = subprocess.Popen(
        [sys.executable, script, "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # closed before the interpreter has even started: every write meets a broken pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_help_in_full_when_the_reader_reads():
    out = subprocess.run([sys.executable, "eval.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Evaluate a checkpoint") and "--out_dir" in out.stdout and not out.stderr


def test_eval_sets_omp_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, sys, eval; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]


def test_python_command_is_what_the_user_can_type(monkeypatch, tmp_path):
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.setattr(sys, "argv", ["train.py", "--c", "x.yaml"])
    monkeypatch.setattr(console.shutil, "which", lambda name: "/usr/bin/python")  # another interpreter
    assert console.python_command() == ".venv/bin/python train.py"
    monkeypatch.setattr(console.shutil, "which", lambda name: str(venv_python))  # an activated venv
    assert console.python_command("eval.py") == "python eval.py"
    monkeypatch.setattr(console.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
    assert console.python_command("train.py") == "/opt/py/bin/python3 train.py"  # absolute when shorter


def _args(tmp_path, **kw):
    base = dict(save_dir=str(tmp_path), save_name="run", resume=False, load_path=None, num_eval_iter=125)
    return Namespace(**{**base, **kw})


def _checkpoint(tmp_path, it, mtime):
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    path = folder / "latest_model.pth"
    torch.save({"format": "x", "it": it}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_ctrl_c_names_this_runs_checkpoint_and_its_iteration(tmp_path):
    start = 1_000_000.0
    ckpt = _checkpoint(tmp_path, 125, start + 60)  # written by this run
    msg = interrupted_message(_args(tmp_path), start, command=".venv/bin/python train.py")
    assert msg.startswith(f"interrupted: this run's last checkpoint is {ckpt} (saved at iteration 125, ")
    assert msg.endswith(
        f"resume with: .venv/bin/python train.py --c {tmp_path / 'run' / 'config.yaml'} --resume true; "
        "iterations after 125 run again"
    )


def test_ctrl_c_before_the_first_checkpoint_never_names_an_earlier_runs(tmp_path):
    start = 1_000_000.0
    assert "nothing to resume" in interrupted_message(_args(tmp_path), start)  # no checkpoint at all
    ckpt = _checkpoint(tmp_path, 500, start - 3600)  # the finished run that overwrite: true replaced (restored)
    msg = interrupted_message(_args(tmp_path, overwrite=True), start)
    assert msg.startswith("interrupted before this run's first checkpoint (one is saved every num_eval_iter = 125")
    assert f"{ckpt} is an earlier run's and was left as it was" in msg and "resume with" not in msg
    # a resumed run's checkpoint is its own, however old
    msg = interrupted_message(_args(tmp_path, resume=True, load_path=str(ckpt)), start, command="python train.py")
    assert msg.startswith(f"interrupted: this run's last checkpoint is {ckpt} (saved at iteration 500, ")
    assert interrupted_message(None, start) == "interrupted before the run started: nothing was written"
