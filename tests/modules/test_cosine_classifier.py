import math

import pytest
import torch

from usb_cfsg.modules import DEFAULT_LOGIT_SCALE, CosineClassifier


def test_defaults_and_shapes():
    clf = CosineClassifier(5, 8)
    assert clf.scale == DEFAULT_LOGIT_SCALE == 30.0
    z = torch.randn(4, 8)
    out = clf(z)
    assert out.shape == (4, 5)
    assert out.abs().max() <= clf.scale + 1e-4


def test_init_from_normalises_and_copies():
    text = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    clf = CosineClassifier.from_text(text, scale=10.0)
    torch.testing.assert_close(clf.weight.data, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    clf.weight.data.add_(1.0)  # the source is a copy
    assert torch.equal(text, torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    with pytest.raises(ValueError):
        clf.init_from(torch.randn(3, 2))


def test_logits_equal_scaled_cosine_by_hand():
    # W = [[1, 0], [0.6, 0.8]] (already unit); z = [[2, 0], [0, 5]] -> unit [[1, 0], [0, 1]]
    # cos(z0, W) = [1, 0.6]; cos(z1, W) = [0, 0.8]; logits = 30 * cos
    clf = CosineClassifier(2, 2, init=torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    torch.testing.assert_close(clf(z), torch.tensor([[30.0, 18.0], [0.0, 24.0]]))
    # the weight's norm never matters
    clf.weight.data.mul_(7.0)
    torch.testing.assert_close(clf(z), torch.tensor([[30.0, 18.0], [0.0, 24.0]]))


def test_general_hand_formula():
    torch.manual_seed(0)
    text = torch.randn(6, 16)
    clf = CosineClassifier.from_text(text, scale=12.5)
    z = torch.randn(3, 16)
    ref = torch.empty(3, 6)
    for b in range(3):
        for k in range(6):
            ref[b, k] = 12.5 * torch.dot(z[b], text[k]) / (z[b].norm() * text[k].norm())
    torch.testing.assert_close(clf(z), ref)


def test_gradient_reaches_weight():
    clf = CosineClassifier(3, 4)
    clf(torch.randn(2, 4)).logsumexp(dim=1).sum().backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [dict(num_classes=0, dim=2), dict(num_classes=2, dim=2, scale=0.0)])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CosineClassifier(**kwargs)


def test_scale_not_in_parameters():
    clf = CosineClassifier(3, 4, scale=math.pi)
    assert [n for n, _ in clf.named_parameters()] == ["weight"]
    assert "scale=3.14" in repr(clf)
