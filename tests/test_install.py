"""A non-editable install works: a wheel of the repository, installed into a folder of its own, runs
train, eval, predict and compare from a folder outside the source tree, importing the installed package.

The wheel is installed with ``--no-deps --target`` and used through the test's interpreter with
``PYTHONPATH`` set to that folder: the dependencies (torch, semilearn, ...) are the environment's, so
the check needs no download, yet every ``usb_cfsg`` module, package data file and console script comes
from the wheel (a module missing from it, a command that finds ``train.py`` through the source tree, or
a path resolved against the package would fail here).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: What a wheel is built from (a copy, so that the build leaves no build/ or egg-info in the tree).
SOURCES = ("setup.py", "README.md", "MANIFEST.in", "requirements.txt", "requirements-dev.txt", "constraints.txt")
PACKAGES = ("usb_cfsg", "usb_cfsg_tools")


def _run(cmd, cwd, env, timeout=600):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_train_eval_predict_and_compare(tmp_path, cub_root):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "wheel", src],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "wheel").glob("usb_cfsg-*.whl")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], tmp_path, env)

    work = tmp_path / "work"  # a user's folder: no source tree in it or above it
    work.mkdir()
    env["PYTHONPATH"] = str(site)
    bin_dir = site / "bin"
    where = _run(
        [
            sys.executable,
            "-c",
            "import usb_cfsg, usb_cfsg_tools; print(usb_cfsg.__file__); print(usb_cfsg_tools.__file__)",
        ],
        work,
        env,
    )
    assert all(Path(line).is_relative_to(site) for line in where.split()), where

    cfg = dict(
        algorithm="fixmatch", net="clip_tiny", pretrained="none", dataset="cub200", data_dir=cub_root,
        num_classes=3, num_labels=6, img_size=32, batch_size=4, eval_batch_size=8, num_train_iter=2,
        num_eval_iter=2, num_log_iter=1, num_workers=0, device="cpu", optim="AdamW", lr=0.001,
        use_tensorboard=False, save_dir="runs", save_name="fm",
    )  # fmt: skip
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    _run([bin_dir / "usb-cfsg-train", "--c", "cfg.yaml"], work, env)
    run = work / "runs" / "fm"  # save_dir: relative to the working folder (config.PATH_RULE)
    assert (run / "latest_model.pth").is_file() and (run / "openset_metrics.json").is_file()

    _run([bin_dir / "usb-cfsg-eval", "--load_path", "runs/fm/latest_model.pth", "--out_dir", "eval"], work, env)
    assert "auroc" in json.loads((work / "eval" / "openset_metrics.json").read_text())

    image = next(Path(cub_root).rglob("*.jpg"))
    lines = _run([bin_dir / "usb-cfsg-predict", "--load_path", "runs/fm/latest_model.pth", image], work, env)
    assert json.loads(lines.splitlines()[0])["path"] == str(image)

    _run([bin_dir / "usb-cfsg-compare", "--c", "cfg.yaml", "--algorithms", "fixmatch", "--save_dir", "cmp"], work, env)
    assert "| fixmatch |" in (work / "cmp" / "results.md").read_text()
    log = (work / "cmp" / "logs" / "fixmatch_seed0.log").read_text()
    assert log.startswith(f"$ {sys.executable} -m usb_cfsg.cli.train ")

    assert "--out" in _run([bin_dir / "usb-cfsg-demo-clip", "--help"], work, env)
