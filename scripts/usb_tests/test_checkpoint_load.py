"""Checkpoints load weights-only (torch >= 2.6's default), old 0.3.2 checkpoints included."""

import numpy as np
import torch


def test_a_0_3_2_checkpoint_with_numpy_scalars_loads(tmp_path):
    from semilearn.core.algorithmbase import load_checkpoint_file

    path = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(1)}, "best_eval_acc": np.float64(0.5), "it": 3}, path)
    ckpt = load_checkpoint_file(str(path))
    assert float(ckpt["best_eval_acc"]) == 0.5 and ckpt["it"] == 3


def test_pretrained_weights_load_weights_only(tmp_path):
    from semilearn.nets.utils import load_checkpoint

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "w.pth"
    torch.save({"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}, path)
    load_checkpoint(model, str(path))
    assert float(model.weight.abs().sum()) == 0.0
