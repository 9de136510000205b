import pytest
import torch

from usb_cfsg.modules import VisualSemanticInjection, VSIOutput

K, D, W = 6, 4, 8


def _setup(seed=0):
    torch.manual_seed(seed)
    vsi = VisualSemanticInjection(D, W, topk=3)
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 1.0, 0.0], [5.0, 0.0, 0.0, 4.0, 0.5, 3.0]])
    protos, text = torch.randn(K, D), torch.randn(K, D)
    return vsi, logits, protos, text


def test_defaults_and_shapes():
    vsi, logits, protos, text = _setup()
    assert vsi.topk == 3 and vsi.proj.in_features == 2 * D and vsi.proj.out_features == W
    assert vsi.type_embedding.shape == (W,) and vsi.type_embedding.abs().max() < 0.2
    out = vsi(logits, protos, text)
    assert isinstance(out, VSIOutput)
    cues, idx = out
    assert cues.shape == (2, 3, W) and idx.shape == (2, 3) and idx.dtype == torch.long
    assert idx.tolist() == [[1, 2, 4], [0, 3, 5]]  # decreasing coarse logit
    assert torch.equal(VisualSemanticInjection(D, W, type_init_std=0.0).type_embedding, torch.zeros(W))


def test_cue_tokens_by_hand():
    vsi = VisualSemanticInjection(2, 3, topk=1, type_init_std=0.0)
    with torch.no_grad():
        vsi.proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
        vsi.proj.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
        vsi.type_embedding.copy_(torch.tensor([1.0, 1.0, 1.0]))
    protos = torch.tensor([[3.0, 4.0], [0.0, 7.0]])  # normalised: [0.6, 0.8], [0, 1]
    text = torch.tensor([[2.0, 0.0], [0.0, -1.0]])  # normalised: [1, 0], [0, -1]
    # class 0: [mu; t] = [0.6, 0.8, 1, 0] -> W x = [0.6, 1.8, 0] + b = [0.6, 2.3, -1] + type = [1.6, 3.3, 0]
    # class 1: [0, 1, 0, -1] -> W x = [0, 1, -2] + b = [0, 1.5, -3] + type = [1, 2.5, -2]
    cues = vsi.cue_tokens(torch.tensor([[0], [1]]), protos, text)
    torch.testing.assert_close(cues, torch.tensor([[[1.6, 3.3, 0.0]], [[1.0, 2.5, -2.0]]]))
    cues, idx = vsi(torch.tensor([[0.0, 1.0]]), protos, text)
    assert idx.tolist() == [[1]]
    torch.testing.assert_close(cues, torch.tensor([[[1.0, 2.5, -2.0]]]))


def test_depends_on_prototypes_of_topk_classes_only():
    vsi, logits, protos, text = _setup()
    ref, idx = vsi(logits, protos, text)
    # same prototypes (a copy) -> identical output
    assert torch.equal(vsi(logits, protos.clone(), text).cues, ref)
    # class 3 is in the top-k of sample 1 only
    changed = protos.clone()
    changed[3] += 1.0
    out = vsi(logits, changed, text).cues
    assert torch.equal(out[0], ref[0])
    assert not torch.allclose(out[1, 1], ref[1, 1])
    assert torch.equal(out[1, [0, 2]], ref[1, [0, 2]])
    # class 1 is in the top-k of sample 0 only
    changed = protos.clone()
    changed[1] = -changed[1]
    out = vsi(logits, changed, text).cues
    assert not torch.allclose(out[0, 0], ref[0, 0]) and torch.equal(out[1], ref[1])


def test_no_effect_from_prototypes_outside_topk():
    vsi, logits, protos, text = _setup()
    ref = vsi(logits, protos, text).cues
    changed = protos.clone()
    logits1 = logits[:1]  # top-3 of sample 0: {1, 2, 4}; classes 0, 3, 5 are outside
    changed[[0, 3, 5]] = torch.randn(3, D) * 10
    assert torch.equal(vsi(logits1, changed, text).cues, ref[:1])


def test_topk_clamped_to_num_classes():
    vsi = VisualSemanticInjection(D, W, topk=5)
    cues, idx = vsi(torch.randn(2, 3), torch.randn(3, D), torch.randn(3, D))
    assert cues.shape == (2, 3, W) and idx.shape == (2, 3)


def test_gradients_reach_parameters_not_prototypes():
    vsi, logits, protos, text = _setup()
    protos.requires_grad_(True)
    logits.requires_grad_(True)
    cues, _ = vsi(logits, protos, text)
    (cues * torch.randn_like(cues)).sum().backward()
    assert vsi.proj.weight.grad.abs().sum() > 0 and vsi.proj.bias.grad.abs().sum() > 0
    assert vsi.type_embedding.grad.abs().sum() > 0
    assert protos.grad is None and logits.grad is None


def test_shape_errors():
    vsi, logits, protos, text = _setup()
    with pytest.raises(ValueError):
        vsi(logits, protos, text[:, :2])
    with pytest.raises(ValueError):
        vsi(logits[:, :4], protos, text)
    with pytest.raises(ValueError):
        VisualSemanticInjection(D, W, topk=0)


def test_deep_cues_project_the_same_pairs_once_per_later_block():
    torch.manual_seed(0)
    vsi = VisualSemanticInjection(joint_dim=4, width=6, topk=2, depth=3)
    logits, protos, text = torch.randn(3, 5), torch.randn(5, 4), torch.randn(5, 4)
    pairs, idx = vsi.cue_pairs(logits, protos, text)
    assert pairs.shape == (3, 2, 8) and torch.equal(idx, logits.topk(2, dim=1).indices)
    cues, _ = vsi(logits, protos, text)
    torch.testing.assert_close(cues, vsi.proj(pairs) + vsi.type_embedding)
    deep = vsi.deep_cues(pairs)
    assert len(deep) == 2
    for proj, layer in zip(vsi.deep, deep):
        torch.testing.assert_close(layer, proj(pairs) + vsi.type_embedding)
    assert not torch.allclose(deep[0], deep[1])  # each block has its own projection
    assert VisualSemanticInjection(4, 6).deep_cues(pairs) == ()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        VisualSemanticInjection(4, 6, depth=0)
