import math

import pytest
import torch

from usb_cfsg.modules import OVAHead, ova_consistency, ova_entropy, ova_loss, ova_probs, ova_unknown_score

LN3, LN4 = math.log(3.0), math.log(4.0)
# Logits [B, 2, K]; row 0 = negative, row 1 = positive; p = softmax over dim 1.
# Sample A: neg [0, 0],   pos [ln3, 0]   -> p_pos = [3/4, 1/2], p_neg = [1/4, 1/2]
# Sample B: neg [ln3, 0], pos [0, ln4]   -> p_pos = [1/4, 4/5], p_neg = [3/4, 1/5]
A = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
B = torch.tensor([[LN3, 0.0], [0.0, LN4]])


def _h(p):  # binary entropy in nats
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_head_shapes_and_convention():
    head = OVAHead(8, 5)
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 2, 5)
    p = ova_probs(out)
    torch.testing.assert_close(p.sum(1), torch.ones(3, 5))
    # the view is [neg logits of K classes, pos logits of K classes] of the linear output
    z = torch.randn(2, 8)
    flat = head.fc(z)
    assert torch.equal(head(z)[:, 0], flat[:, :5]) and torch.equal(head(z)[:, 1], flat[:, 5:])


def test_probs_of_reference_logits():
    p = ova_probs(torch.stack([A, B]))
    torch.testing.assert_close(p[:, 1], torch.tensor([[0.75, 0.5], [0.25, 0.8]]))
    torch.testing.assert_close(p[:, 0], torch.tensor([[0.25, 0.5], [0.75, 0.2]]))


def test_ova_loss_reference():
    # y = [0, 1]
    # positive: A: -ln(3/4) = ln(4/3); B: -ln(4/5) = ln(5/4); mean = ln(5/3) / 2
    # hardest negative: A (k != 0 -> k = 1): -ln(1/2) = ln 2; B (k = 0): -ln(3/4) = ln(4/3);
    #   mean = ln(8/3) / 2
    # total = (ln(5/3) + ln(8/3)) / 2 = ln(40/9) / 2 = 0.745829
    loss = ova_loss(torch.stack([A, B]), torch.tensor([0, 1]))
    torch.testing.assert_close(loss, torch.tensor(math.log(40 / 9) / 2))
    torch.testing.assert_close(loss, torch.tensor(0.745829), atol=1e-5, rtol=0)


def test_ova_loss_takes_the_hardest_negative():
    # K = 3, neg [0, 0, 0], pos [0, ln3, -ln3]: p_neg = [1/2, 1/4, 3/4]; y = 0
    # positive: -ln(1/2) = ln 2; negatives k = 1: -ln(1/4) = ln 4, k = 2: -ln(3/4) -> max = ln 4
    # total = ln 2 + ln 4 = ln 8
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN3, -LN3]]])
    torch.testing.assert_close(ova_loss(logits, torch.tensor([0])), torch.tensor(math.log(8.0)))


def test_ova_loss_single_class_has_no_negative_term():
    # K = 1: neg 0, pos ln3 -> p_pos = 3/4; loss = -ln(3/4)
    logits = torch.tensor([[[0.0], [LN3]]])
    torch.testing.assert_close(ova_loss(logits, torch.tensor([0])), torch.tensor(math.log(4 / 3)))


def test_ova_entropy_reference():
    # A: mean(H(1/4), H(1/2)) = mean(0.562335, 0.693147) = 0.627741
    # B: mean(H(1/4), H(1/5)) = mean(0.562335, 0.500402) = 0.531368; batch mean 0.579555
    ref = ((_h(0.25) + _h(0.5)) / 2 + (_h(0.25) + _h(0.2)) / 2) / 2
    ent = ova_entropy(torch.stack([A, B]))
    torch.testing.assert_close(ent, torch.tensor(ref))
    torch.testing.assert_close(ent, torch.tensor(0.579555), atol=1e-5, rtol=0)
    assert 0 <= ova_entropy(torch.randn(4, 2, 7) * 10) <= math.log(2)


def test_ova_consistency_reference():
    # A vs B: p_pos diff = [3/4 - 1/4, 1/2 - 4/5] = [1/2, -3/10]; p_neg diff = -(that)
    # sum of squares over {neg, pos} x K = 2 * (0.25 + 0.09) = 0.68
    torch.testing.assert_close(ova_consistency(A[None], B[None]), torch.tensor(0.68))
    # batch [A, A] vs [B, A]: per-sample [0.68, 0]; mean 0.34
    torch.testing.assert_close(ova_consistency(torch.stack([A, A]), torch.stack([B, A])), torch.tensor(0.34))
    assert ova_consistency(B[None], A[None]) == ova_consistency(A[None], B[None])
    with pytest.raises(ValueError):
        ova_consistency(A[None], torch.zeros(1, 2, 3))


def test_ova_unknown_score_reference():
    logits = torch.stack([A, B])
    # p_neg = [[1/4, 1/2], [3/4, 1/5]]
    torch.testing.assert_close(ova_unknown_score(logits, torch.tensor([0, 1])), torch.tensor([0.25, 0.2]))
    torch.testing.assert_close(ova_unknown_score(logits, torch.tensor([1, 0])), torch.tensor([0.5, 0.75]))
    u = ova_unknown_score(torch.randn(5, 2, 4) * 20, torch.randint(0, 4, (5,)))
    assert u.shape == (5,) and (u >= 0).all() and (u <= 1).all()


@pytest.mark.parametrize("bias", [False, True])
def test_gradients_reach_the_head(bias):
    head = OVAHead(6, 4, bias=bias)
    z1, z2 = torch.randn(3, 6), torch.randn(3, 6)
    lo1, lo2 = head(z1), head(z2)
    loss = ova_loss(lo1, torch.tensor([0, 1, 3])) + ova_entropy(lo1) + ova_consistency(lo1, lo2)
    loss.backward()
    assert head.fc.weight.grad.abs().sum() > 0
    assert (head.fc.bias is not None) == bias
    if bias:
        assert head.fc.bias.grad.abs().sum() > 0


def test_default_head_has_no_bias_as_openmatch():
    head = OVAHead(6, 4)
    assert head.fc.bias is None and "bias=False" in repr(head)
    # without a bias the zero feature is undecided for every class: p_pos = p_neg = 1/2
    torch.testing.assert_close(head(torch.zeros(2, 6)).softmax(dim=1), torch.full((2, 2, 4), 0.5))


def test_shape_errors():
    with pytest.raises(ValueError):
        ova_loss(torch.zeros(2, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        ova_loss(torch.zeros(2, 2, 4), torch.tensor([0]))
    with pytest.raises(ValueError):
        ova_unknown_score(torch.zeros(2, 2, 4), torch.tensor([0]))
