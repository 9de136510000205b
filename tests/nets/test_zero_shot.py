"""The zero-shot prior (zs_weight, zs_mode) as one contract shared by every CLIP head that trains.

ClipNet (USB's algorithms), OpenMatchNet, IOMatchNet and CFSGNet must each: mix the frozen zero-shot
classifier into ``logits`` as ``(1 - a) * trained + a * zero-shot``; keep that classifier frozen while
the net trains; and, with ``zs_mode: weights``, predict with a plain merged copy (WiSE-FT) that equals
the zero-shot classifier at a = 1 and the trained net at a = 0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import usb_cfsg  # noqa: F401  (registers the heads)
from usb_cfsg.errors import ConfigError
from usb_cfsg.nets import BUILDERS

HEADS = ["clip", "openmatch", "iomatch", "cfsg"]


def make(head: str, text_encoder: str = "clip", **kwargs):
    torch.manual_seed(0)
    return BUILDERS["clip_tiny"](
        num_classes=3,
        pretrained="none",
        img_size=64,
        head=head,
        num_tuned_blocks=2,
        class_names=["Shirt", "Coat", "Bag"],
        text_encoder=text_encoder,
        **kwargs,
    )


def _trained_logits(net, out):
    """The net's own (prior-free) closed logits, recomputed from its outputs."""
    if "logits_coarse" in out:  # CFSGNet: (coarse + fine) / 2
        return (out["logits_coarse"] + out["logits_fine"]) / 2
    return net.classifier(out["feat"])


def _train(net, x, steps: int = 2) -> None:
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        F.cross_entropy(net(x)["logits"], torch.arange(x.shape[0]) % 3).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("head", HEADS)
def test_zs_weight_zero_adds_nothing(head):
    net = make(head)
    assert net.zero_shot is None and not any(k.startswith("zero_shot.") for k in net.state_dict())
    assert "logits_zs" not in net.eval()(torch.randn(2, 3, 64, 64))
    assert net.for_prediction() is net


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_logits_are_the_output_ensemble_with_the_frozen_zero_shot_classifier(head, weight):
    net = make(head, zs_weight=weight).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        g0 = out["feat_global"] if "feat_global" in out else out["feat"]  # untrained: the pretrained feature
        zs = 30.0 * F.normalize(g0, dim=-1) @ F.normalize(net.zero_shot.text, dim=-1).t()
        torch.testing.assert_close(out["logits_zs"], zs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["logits"], (1 - weight) * _trained_logits(net, out) + weight * zs)


@pytest.mark.parametrize("head", HEADS)
def test_the_prior_stays_frozen_while_the_net_trains(head):
    net = make(head, zs_weight=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = net.eval()(x)["logits_zs"]
    net.train()
    assert not any(p.requires_grad for p in net.zero_shot.parameters())
    _train(net, x)
    assert all(p.grad is None for p in net.zero_shot.parameters())
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)["logits_zs"], before)


@pytest.mark.parametrize("head", HEADS)
def test_weight_space_merge_spans_trained_and_zero_shot(head):
    x = torch.randn(3, 3, 64, 64)
    net = make(head, zs_weight=1.0, zs_mode="weights")
    _train(net.train(), x)
    net.eval()
    with torch.no_grad():
        out = net(x)
        zs = net.zero_shot.logits(net.backbone.trunk(x))
        # weights mode trains plainly: the closed logits are the trained ones (cfsg also returns logits_zs)
        torch.testing.assert_close(out["logits"], _trained_logits(net, out))
        assert ("logits_zs" in out) == (head == "cfsg")
        merged = net.for_prediction()
        assert merged is not net and merged.zero_shot is None and net.zero_shot is not None
        out = merged(x)
        assert "logits_zs" not in out
        if head == "clip" or head == "openmatch" or head == "iomatch":
            # a = 1: every interpolated part is back at its pretrained / text value: the zero-shot classifier
            torch.testing.assert_close(out["logits"], zs, atol=1e-4, rtol=1e-4)
    # a = 0.4: each tuned parameter is the interpolation; parts without a zero-shot counterpart stay trained
    net.zero_shot.weight = 0.4
    merged = net.for_prediction()
    tuned = dict(net.backbone.tuned_blocks[-1].named_parameters())
    frozen = dict(net.zero_shot.tail.tuned_blocks[-1].named_parameters())
    for name, p in merged.backbone.tuned_blocks[-1].named_parameters():
        torch.testing.assert_close(p, 0.6 * tuned[name] + 0.4 * frozen[name])
    head_mod = merged.classifier if hasattr(merged, "classifier") else merged.fine_head
    source = net.classifier if hasattr(net, "classifier") else net.fine_head
    torch.testing.assert_close(
        head_mod.weight, 0.6 * F.normalize(source.weight, dim=-1) + 0.4 * F.normalize(net.zero_shot.text, dim=-1)
    )
    if hasattr(net, "ova"):
        torch.testing.assert_close(merged.ova.fc.weight, net.ova.fc.weight)


@pytest.mark.parametrize("head", HEADS)
def test_checkpoint_round_trip_keeps_the_prior(head):
    net = make(head, zs_weight=0.5)
    with torch.no_grad():
        for p in net.zero_shot.tail.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other = make(head, zs_weight=0.5)
    other.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x)["logits"], net.eval()(x)["logits"])


@pytest.mark.parametrize("head", HEADS)
def test_no_zero_shot_classifier_to_keep_is_refused(head):
    with pytest.raises(ConfigError, match="text_encoder: clip"):
        make(head, text_encoder="minilm", zs_weight=0.5)
    with pytest.raises(ConfigError, match=r"zs_weight must be in \[0, 1\]"):
        make(head, zs_weight=1.5)
    with pytest.raises(ConfigError, match="zs_mode must be one of output, weights"):
        make(head, zs_weight=0.5, zs_mode="both")


def test_cfsg_skips_the_zero_shot_forward_of_the_first_rows():
    net = make("cfsg", zs_weight=0.5).eval()
    x = torch.randn(5, 3, 64, 64)
    calls = []
    hook = net.zero_shot.tail.tuned_blocks[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with torch.no_grad():
        full = net(x)
        part = net(x, zs_skip=2)
    hook.remove()
    assert calls == [5, 3]  # the frozen copy ran on the 3 unlabeled rows only
    torch.testing.assert_close(part["logits"][2:], full["logits"][2:])
    torch.testing.assert_close(part["logits_zs"][2:], full["logits_zs"][2:])
    assert torch.isnan(part["logits_zs"][:2]).all()
    torch.testing.assert_close(part["logits"][:2], (part["logits_coarse"][:2] + part["logits_fine"][:2]) / 2)


def test_weights_mode_trains_usbs_head_without_the_frozen_copy():
    """zs_mode weights is WiSE-FT: plain fine-tuning (no zero-shot forward at all for ClipNet), merge to predict."""
    net = make("clip", zs_weight=0.5, zs_mode="weights").train()
    calls = []
    net.zero_shot.tail.tuned_blocks[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    out = net(torch.randn(2, 3, 64, 64))
    assert calls == [] and "logits_zs" not in out
    torch.testing.assert_close(out["logits"], net.classifier(out["feat"]))


@pytest.mark.parametrize(
    ("head", "names"), [("clip", ["classifier"]), ("iomatch", ["classifier"]), ("cfsg", ["coarse_head", "fine_head"])]
)
def test_the_merge_interpolates_every_text_initialised_head(head, names):
    net = make(head, zs_weight=0.5, zs_mode="weights")
    assert net.zero_shot_heads() == [getattr(net, n) for n in names]
