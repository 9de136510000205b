import math

import pytest
import torch

from usb_cfsg.modules import ClassPrototypes


def test_buffers_and_defaults():
    protos = ClassPrototypes(3, 2)
    assert protos.momentum == 0.99 and protos.normalize is True
    assert protos.mu.shape == (3, 2) and protos.initialized.dtype == torch.bool
    assert not protos.initialized.any() and list(protos.parameters()) == []
    assert set(protos.state_dict()) == {"mu", "initialized"}


def test_raw_ema_against_hand_values():
    protos = ClassPrototypes(3, 2, normalize=False)
    # batch 1: class 0 <- mean([1, 2], [3, 4]) = [2, 3] (first update: copy);
    # the class-1 sample is masked out, class 2 absent
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]])
    updated = protos.update(feats, torch.tensor([0, 0, 1]), mask=torch.tensor([True, True, False]))
    assert updated.tolist() == [True, False, False]
    torch.testing.assert_close(protos.mu, torch.tensor([[2.0, 3.0], [0.0, 0.0], [0.0, 0.0]]))
    assert protos.initialized.tolist() == [True, False, False]
    # batch 2, m = 0.9: class 0 <- 0.9 * [2, 3] + 0.1 * [4, 5] = [2.2, 3.2]; class 2 <- copy of [6, -1]
    protos.update(torch.tensor([[4.0, 5.0], [6.0, -1.0]]), torch.tensor([0, 2]), momentum=0.9)
    torch.testing.assert_close(protos.mu, torch.tensor([[2.2, 3.2], [0.0, 0.0], [6.0, -1.0]]))
    assert protos.initialized.tolist() == [True, False, True]
    # batch 3, default m = 0.99, two samples of class 2: mean [2, 3];
    # class 2 <- 0.99 * [6, -1] + 0.01 * [2, 3] = [5.96, -0.96]
    protos.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([2, 2]))
    torch.testing.assert_close(protos.mu[2], torch.tensor([5.96, -0.96]))
    torch.testing.assert_close(protos.mu[0], torch.tensor([2.2, 3.2]))


def test_normalised_ema_against_hand_values():
    protos = ClassPrototypes(2, 2, momentum=0.5)
    # [3, 4] -> [0.6, 0.8]; [0, 2] -> [0, 1]; mean [0.3, 0.9]; norm sqrt(0.9) -> [0.3, 0.9] / 0.948683
    protos.update(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([0, 0]))
    first = torch.tensor([0.3, 0.9]) / math.sqrt(0.9)
    torch.testing.assert_close(protos.mu[0], first)
    # [5, 0] -> [1, 0]; EMA 0.5 * first + 0.5 * [1, 0] = [0.658114, 0.474342], then renormalised
    protos.update(torch.tensor([[5.0, 0.0]]), torch.tensor([0]))
    second = 0.5 * first + 0.5 * torch.tensor([1.0, 0.0])
    torch.testing.assert_close(protos.mu[0], second / second.norm())
    torch.testing.assert_close(protos.mu[0], torch.tensor([0.811242, 0.584710]), atol=1e-5, rtol=0)
    torch.testing.assert_close(protos.mu[1], torch.zeros(2))


def test_no_autograd_and_deterministic():
    torch.manual_seed(0)
    feats = torch.randn(16, 4, requires_grad=True)
    labels = torch.randint(0, 5, (16,))
    a, b = ClassPrototypes(5, 4), ClassPrototypes(5, 4)
    a.update(feats * 2.0, labels)
    b.update(feats * 2.0, labels)
    assert torch.equal(a.mu, b.mu)
    assert not a.mu.requires_grad and a.mu.grad_fn is None


def test_ignores_unselected_invalid_labels_and_rejects_selected_ones():
    protos = ClassPrototypes(2, 2, normalize=False)
    protos.update(torch.tensor([[1.0, 1.0], [9.0, 9.0]]), torch.tensor([1, -1]), mask=torch.tensor([True, False]))
    torch.testing.assert_close(protos.mu, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError):
        protos.update(torch.ones(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError):
        protos.update(torch.ones(2, 3), torch.tensor([0, 1]))
    assert not protos.update(torch.ones(1, 2), torch.tensor([0]), mask=torch.tensor([False])).any()


def test_reduce_fn_equals_update_on_the_gathered_batch():
    # simulate two processes: each holds half the batch; reduce_fn adds the other half's sums
    torch.manual_seed(1)
    feats, labels = torch.randn(12, 3), torch.tensor([0, 1, 2, 0, 1, 0, 2, 2, 1, 0, 3, 3])
    full = ClassPrototypes(4, 3)
    full.update(feats, labels)
    rank0, rank1 = ClassPrototypes(4, 3), ClassPrototypes(4, 3)
    other = iter(rank1.class_sums(feats[6:], labels[6:]))
    rank0.update(feats[:6], labels[:6], reduce_fn=lambda x: x + next(other))
    torch.testing.assert_close(rank0.mu, full.mu)
    assert torch.equal(rank0.initialized, full.initialized)


def test_get_with_fallback():
    protos = ClassPrototypes(3, 2)
    protos.update(torch.tensor([[0.0, 2.0]]), torch.tensor([1]))
    text = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -5.0]])
    out = protos.get(text)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, -1.0]]))
    assert torch.equal(protos(), protos.mu)


def test_state_dict_round_trip():
    a = ClassPrototypes(3, 2)
    a.update(torch.tensor([[1.0, 0.0]]), torch.tensor([2]))
    b = ClassPrototypes(3, 2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mu, a.mu) and torch.equal(b.initialized, a.initialized)
    b.reset()
    assert not b.initialized.any() and not b.mu.any()
