"""semilearn imports without the packages that only unused USB code paths need (usb_cfsg/optional.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from usb_cfsg.optional import MissingOptionalPackage, missing_for_config, stand_ins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A light installation, simulated: these packages cannot be found (as after make install).
_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCK = {"wandb", "aim", "torchaudio", "skimage"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import usb_cfsg
    import semilearn
    from semilearn.core.hooks import wandb as wandb_hook
    from semilearn.core.utils import ALGORITHMS

    assert "cfsg_clip" in ALGORITHMS, "our algorithms are registered"
    assert not any(name.split(".")[0] in BLOCK for name in sys.modules), "the stand-ins left sys.modules"
    try:
        wandb_hook.wandb.init(project="x")
    except ImportError as exc:
        print("USE:", type(exc).__name__, exc)
    from usb_cfsg.config import build_config
    from usb_cfsg.errors import ConfigError

    try:
        build_config(["--use_wandb", "true"])
    except ConfigError as exc:
        print("CONFIG:", exc)
    print("OK", build_config(["--use_wandb", "false"]).use_wandb)
    """
)


def test_semilearn_imports_and_use_wandb_fails_clearly_without_the_optional_packages():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    use = next(line for line in lines if line.startswith("USE:"))
    assert "MissingOptionalPackage wandb.init needs the wandb package" in use and "pip install wandb" in use
    config = next(line for line in lines if line.startswith("CONFIG:"))
    assert "use_wandb: true needs the wandb package" in config and "pip install -c constraints.txt wandb" in config
    assert lines[-1] == "OK False"


def test_installed_packages_are_never_replaced():
    import json

    with stand_ins(("json", "usb_cfsg_no_such_package")) as replaced:
        assert replaced == ["usb_cfsg_no_such_package"]
        import usb_cfsg_no_such_package as missing  # type: ignore[import-not-found]
        from usb_cfsg_no_such_package.sub import Thing  # type: ignore[import-not-found]  # submodules too
    assert sys.modules["json"] is json and "usb_cfsg_no_such_package" not in sys.modules
    with pytest.raises(MissingOptionalPackage, match="pip install usb_cfsg_no_such_package"):
        missing.anything()
    with pytest.raises(MissingOptionalPackage, match="Thing.from_pretrained"):
        Thing.from_pretrained("x")
    with pytest.raises(ImportError):  # a MissingOptionalPackage is an ImportError, so guards keep working
        Thing()


def test_config_check_only_when_the_package_is_missing(monkeypatch):
    import usb_cfsg.optional as optional

    monkeypatch.setattr(optional, "is_installed", lambda module: module != "aim")
    assert missing_for_config({"use_wandb": True, "use_aim": False}) == []
    (problem,) = missing_for_config({"use_wandb": True, "use_aim": True})
    assert problem.startswith("use_aim: true needs the aim package") and "pip install aim" in problem
