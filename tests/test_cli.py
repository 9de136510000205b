"""The commands as modules: ``python -m`` runs each of them, and every console script names a real command."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console_scripts():
    """``name = module:function`` entries of setup.py's console_scripts."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(
            isinstance(k, ast.Constant) and k.value == "console_scripts" for k in node.keys
        ):
            (entries,) = [v for k, v in zip(node.keys, node.values) if getattr(k, "value", None) == "console_scripts"]
            return [e.value for e in entries.elts]
    raise AssertionError("setup.py declares no console_scripts")


def test_every_console_script_names_a_command_function():
    scripts = dict(line.replace(" ", "").split("=") for line in _console_scripts())
    assert set(scripts) == {
        "usb-cfsg-train",
        "usb-cfsg-eval",
        "usb-cfsg-predict",
        "usb-cfsg-compare",
        "usb-cfsg-demo-clip",
    }
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


@pytest.mark.parametrize(
    "module, expect",
    [
        ("usb_cfsg.cli.train", "usb-cfsg-train"),
        ("usb_cfsg.cli.eval", "usb-cfsg-eval"),
        ("usb_cfsg.cli.predict", "--load_path"),
        ("usb_cfsg_tools.compare", "--algorithms"),
    ],
)
def test_python_m_runs_the_command(module, expect, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0 and expect in out.stdout, out.stderr[-2000:]


def test_the_predict_module_is_not_a_silent_no_op(tmp_path):
    """``python -m usb_cfsg.evaluation.predict img.png`` used to exit 0 and print nothing; now it is the
    predict command, which says what is missing."""
    out = subprocess.run(
        [sys.executable, "-m", "usb_cfsg.evaluation.predict", str(tmp_path / "img.png")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2 and "--load_path" in out.stderr
