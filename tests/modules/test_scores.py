import math

import pytest
import torch

from usb_cfsg.modules import fit_score_range, fused_score, glmcm_score, max_softmax_cosine, mcm_score

TEXT = torch.eye(2)  # t_0 = e0, t_1 = e1


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_mcm_reference():
    # cos([1, 0], t) = [1, 0] -> max softmax = e / (1 + e) = sigmoid(1) = 0.731059 -> score 0.268941
    # cos([0.6, 0.8], t) = [0.6, 0.8] -> sigmoid(0.2) = 0.549834 -> 0.450166
    # [3, 0] is [1, 0] rescaled -> same as the first
    feat = torch.tensor([[1.0, 0.0], [0.6, 0.8], [3.0, 0.0]])
    expected = torch.tensor([1 - _sig(1.0), 1 - _sig(0.2), 1 - _sig(1.0)])
    torch.testing.assert_close(mcm_score(feat, TEXT), expected)
    torch.testing.assert_close(mcm_score(feat, TEXT), torch.tensor([0.268941, 0.450166, 0.268941]), atol=1e-6, rtol=0)
    # T = 0.5: sigmoid(0.2 / 0.5) = sigmoid(0.4) = 0.598688 -> 0.401312
    torch.testing.assert_close(mcm_score(feat[1:2], TEXT, temperature=0.5), torch.tensor([1 - _sig(0.4)]))


def test_mcm_range_and_sign():
    torch.manual_seed(0)
    text = torch.randn(10, 16)
    s = mcm_score(torch.randn(32, 16), text)
    assert (s >= 0).all() and (s <= 1 - 1 / 10 + 1e-6).all()
    # a feature equal to a class text is less unknown than one orthogonal-ish to all
    sharp = mcm_score(text[:1], text, temperature=0.05)
    vague = mcm_score(torch.randn(1, 16), text, temperature=0.05)
    assert sharp < vague


def test_glmcm_reference():
    # global [0.6, 0.8]: S_G = sigmoid(0.2) = 0.549834
    # patches [0, 1] -> cos [0, 1] -> sigmoid(1) = 0.731059; [1, 1] -> cos [.7071, .7071] -> 0.5
    # S_L = max = 0.731059; score = 1 - (0.549834 + 0.731059) / 2 = 0.359553
    g = torch.tensor([[0.6, 0.8]])
    patches = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    expected = 1 - (_sig(0.2) + _sig(1.0)) / 2
    torch.testing.assert_close(glmcm_score(g, patches, TEXT), torch.tensor([expected]))
    torch.testing.assert_close(glmcm_score(g, patches, TEXT), torch.tensor([0.359553]), atol=1e-6, rtol=0)
    # a single local feature [B, D] is one "patch"
    torch.testing.assert_close(glmcm_score(g, torch.tensor([[0.0, 1.0]]), TEXT), torch.tensor([expected]))
    torch.testing.assert_close(
        glmcm_score(g, torch.tensor([[1.0, 1.0]]), TEXT), torch.tensor([1 - (_sig(0.2) + 0.5) / 2])
    )


def test_glmcm_range_and_consistency_with_mcm():
    torch.manual_seed(1)
    text, g, p = torch.randn(7, 8), torch.randn(5, 8), torch.randn(5, 4, 8)
    s = glmcm_score(g, p, text, temperature=0.1)
    assert s.shape == (5,) and (s >= 0).all() and (s <= 1 - 1 / 7 + 1e-6).all()
    # with the global feature as the only local one, GL-MCM equals MCM
    torch.testing.assert_close(glmcm_score(g, g, text, 0.3), mcm_score(g, text, 0.3))
    ref = 1 - 0.5 * (max_softmax_cosine(g, text, 0.1) + max_softmax_cosine(p, text, 0.1).max(1).values)
    torch.testing.assert_close(s, ref)


def test_fused_score():
    scores = {"ova": torch.tensor([0.2, 0.8]), "glmcm": torch.tensor([0.4, 0.6])}
    torch.testing.assert_close(fused_score(scores), torch.tensor([0.3, 0.7]))
    # weights 3 : 1 -> [(0.6 + 0.4) / 4, (2.4 + 0.6) / 4]
    torch.testing.assert_close(fused_score(scores, {"ova": 3.0, "glmcm": 1.0}), torch.tensor([0.25, 0.75]))
    # range (0.4, 0.6) maps glmcm to [0, 1]: mean([0.2, 0], [0.8, 1]) = [0.1, 0.9]
    torch.testing.assert_close(fused_score(scores, ranges={"glmcm": (0.4, 0.6)}), torch.tensor([0.1, 0.9]))
    # scores outside [0, 1] are clamped; unnamed scores are ignored
    torch.testing.assert_close(
        fused_score({"a": torch.tensor([-1.0, 2.0]), "b": torch.zeros(2)}, {"a": 1.0}), torch.tensor([0.0, 1.0])
    )
    with pytest.raises(KeyError):
        fused_score(scores, {"mcm": 1.0})
    with pytest.raises(ValueError):
        fused_score(scores, {"ova": 0.0})
    with pytest.raises(ValueError):
        fused_score({})


def test_fit_score_range():
    assert fit_score_range(torch.arange(101.0)) == pytest.approx((1.0, 99.0))
    assert fit_score_range(torch.arange(101.0), (0.0, 1.0)) == pytest.approx((0.0, 100.0))
    lo, hi = fit_score_range(torch.full((5,), 0.3))
    assert hi > lo
    with pytest.raises(ValueError):
        fit_score_range(torch.arange(3.0), (0.9, 0.1))


def test_temperature_must_be_positive():
    with pytest.raises(ValueError):
        mcm_score(torch.randn(2, 2), TEXT, temperature=0.0)
