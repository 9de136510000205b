"""docs/contributing.md is true: its toy algorithm, copied into a folder of its own (its file plus one
import), registers and trains through train.py on CPU with its own key."""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import train
from tests.conftest import tiny_run_argv

DOC = Path(__file__).resolve().parents[2] / "docs" / "contributing.md"
NAME = "toy_entmin"


def _toy_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    (source,) = [b for b in blocks if b.startswith(f'"""{NAME}:')]
    return source


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    (tmp_path / f"{NAME}.py").write_text(_toy_source(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(NAME)  # the one registration line
    yield module
    from semilearn.core.utils import ALGORITHMS

    ALGORITHMS._dict.pop(NAME, None)  # other tests list every registered algorithm
    sys.modules.pop(NAME, None)


def test_the_documented_toy_algorithm_trains_with_its_own_key(toy_module, tmp_path, cub_root):
    from usb_cfsg.algorithms import get_algorithm_class

    assert get_algorithm_class(NAME) is toy_module.ToyEntMin
    argv = tiny_run_argv(
        cub_root, str(tmp_path / "runs"), "toy", algorithm=NAME, iters=2, img_size=32, num_eval_iter=2, num_log_iter=1
    )
    assert train.cli([*argv, "--ent_weight", "half"]) == 2  # its key is checked like every key
    assert not (tmp_path / "runs" / "toy").exists()
    assert train.cli([*argv, "--ent_weight", "0.5", "--use_tensorboard", "false"]) == 0
    run = tmp_path / "runs" / "toy"
    assert yaml.safe_load((run / "config.yaml").read_text())["ent_weight"] == 0.5
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert set(metrics["scores"]) == {"msp", "energy"} and 0.0 <= metrics["auroc"] <= 1.0
    assert "training toy_entmin for 2 iterations" in (run / "log.txt").read_text()
