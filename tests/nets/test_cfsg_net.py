"""The CFSG network: outputs, switches, gradients and the role of the prototypes."""
import pytest
import torch

import usb_cfsg  # noqa: F401
from usb_cfsg.nets import BUILDERS


def make(text_encoder="clip", **switches):
    torch.manual_seed(0)
    return BUILDERS["clip_tiny"](num_classes=4, pretrained="none", img_size=64, head="cfsg", num_tuned_blocks=2,
                                 class_names=["Shirt", "Coat", "Bag", "Sandal"], text_encoder=text_encoder,
                                 **switches)


def test_outputs_shapes_and_ranges():
    net = make()
    out = net(torch.randn(3, 3, 64, 64))
    assert out["logits"].shape == (3, 4) and out["feat"].shape == (3, 64)
    assert out["logits_ova"].shape == (3, 2, 4)
    assert out["relevance"].shape == (3, 16) and out["keep_idx"].shape == (3, 4)  # 4x4 patches, rho 0.25
    torch.testing.assert_close(out["relevance"].sum(1), torch.ones(3))
    assert (out["relevance"] >= 0).all()
    torch.testing.assert_close(out["logits"], (out["logits_coarse"] + out["logits_fine"]) / 2)
    for name in ("ova", "mcm", "glmcm", "fused"):
        s = out[f"score_{name}"]
        assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all(), name
    assert torch.allclose(net(torch.zeros(1, 64), only_fc=True), net.fine_head(torch.zeros(1, 64)))


def test_closed_head_fine_uses_fine_logits():
    out = make(closed_head="fine")(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out["logits"], out["logits_fine"])


@pytest.mark.parametrize("switches", [dict(use_sfm=False), dict(use_vsi=False), dict(use_sfm=False, use_vsi=False),
                                      dict(sfm_dense="tokens")])
def test_ablation_switches_run(switches):
    net = make(**switches)
    out = net(torch.randn(2, 3, 64, 64))
    out["logits"].sum().backward()
    assert out["logits"].shape == (2, 4)
    if not switches.get("use_sfm", True):
        torch.testing.assert_close(out["relevance"], torch.full((2, 16), 1 / 16))


@pytest.mark.parametrize("text_encoder", ["clip", "minilm"])
def test_gradients_reach_exactly_the_trainable_parameters(text_encoder):
    net = make(text_encoder)
    out = net(torch.randn(4, 3, 64, 64))
    loss = (torch.nn.functional.cross_entropy(out["logits_coarse"], torch.tensor([0, 1, 2, 3]))
            + torch.nn.functional.cross_entropy(out["logits_fine"], torch.tensor([0, 1, 2, 3]))
            + out["logits_ova"].logsumexp(1).sum())
    loss.backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    expected_prefixes = ("backbone.visual.transformer.resblocks.2.", "backbone.visual.transformer.resblocks.3.",
                         "backbone.visual.ln_post", "backbone.visual.proj", "coarse_head.", "fine_head.", "vsi.",
                         "ova.")
    assert all(n.startswith(expected_prefixes + (("text.proj",) if text_encoder == "minilm" else ())) for n in trainable)
    for prefix in expected_prefixes:
        assert any(n.startswith(prefix) for n in trainable), prefix
    assert ("text.proj.weight" in trainable) == (text_encoder == "minilm")
    assert not any(n.startswith("backbone.visual.transformer.resblocks.0.") for n in trainable)
    assert "prototypes.mu" in dict(net.named_buffers()) and "text.raw" in dict(net.named_buffers())


def test_fine_branch_depends_on_prototypes_of_topk_classes_only():
    net = make(vsi_topk=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x)
        top = base["logits_coarse"].topk(2, dim=1).indices[0].tolist()
        other = next(k for k in range(4) if k not in top)
        net.prototypes.update(torch.randn(1, 64), torch.tensor([other]))
        same = net(x)
        net.prototypes.update(torch.randn(1, 64), torch.tensor([top[0]]))
        changed = net(x)
    torch.testing.assert_close(same["logits_fine"], base["logits_fine"])
    assert not torch.allclose(changed["logits_fine"], base["logits_fine"])
    torch.testing.assert_close(changed["logits_coarse"], base["logits_coarse"])  # coarse branch untouched


def test_minilm_text_embeddings_carry_class_semantics():
    net = make("minilm")
    raw = net.text.raw  # MiniLM prompt-ensemble embeddings of Shirt, Coat, Bag, Sandal
    assert raw[0] @ raw[1] > raw[0] @ raw[3]  # a shirt is closer to a coat than to a sandal
    t = net.text()
    offdiag = (t @ t.t()).masked_select(~torch.eye(4, dtype=torch.bool))
    assert offdiag.max() < 0.9  # distinct directions after the learned projection
