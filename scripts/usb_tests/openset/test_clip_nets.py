"""CLIP nets (open_clip) as semilearn nets, built at the configured input size."""

import argparse

import semilearn.nets as nets
import torch


def test_clip_tiny_builds_at_any_input_size():
    net = nets.clip_tiny(num_classes=3, pretrained=None, img_size=32)
    out = net(torch.zeros(2, 3, 32, 32))
    assert out["logits"].shape == (2, 3) and out["feat"].shape[0] == 2


def test_algorithmbase_builds_clip_nets_at_img_size():
    from semilearn.core.algorithmbase import AlgorithmBase

    alg = AlgorithmBase.__new__(AlgorithmBase)
    alg.args = argparse.Namespace(use_pretrain=False, pretrain_path="", img_size=32)
    alg.num_classes, alg.net_builder = 3, nets.clip_tiny
    alg.model = alg.set_model()
    ema = alg.set_ema_model()
    for model in (alg.model, ema):
        assert model(torch.zeros(1, 3, 32, 32))["logits"].shape == (1, 3)
