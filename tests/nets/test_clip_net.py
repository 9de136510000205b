"""USB's net contract for every CLIP net, frozen/trainable split, and weight loading."""
import open_clip
import pytest
import torch
from semilearn.core.utils import get_optimizer

import usb_cfsg  # noqa: F401
from usb_cfsg.errors import ConfigError
from usb_cfsg.nets import BUILDERS
from usb_cfsg.nets.clip import _ensure_configs

# Small inputs keep even ViT-L/14 cheap on CPU: (net, img_size giving a 4x4 patch grid).
NETS = [("clip_tiny", 64), ("clip_vit_b32", 128), ("clip_vit_b16", 64), ("clip_vit_l14", 56)]


@pytest.mark.parametrize("name,size", NETS)
def test_contract_forward_backward_and_frozen_split(name, size):
    torch.manual_seed(0)
    net = BUILDERS[name](num_classes=3, pretrained="none", img_size=size, num_tuned_blocks=2,
                         class_names=["cat", "dog", "bird"])
    x = torch.randn(2, 3, size, size)
    out = net(x)
    assert set(out) == {"logits", "feat"}
    assert out["logits"].shape == (2, 3) and out["feat"].shape == (2, net.num_features)
    assert torch.allclose(net(x, only_feat=True), out["feat"])
    assert torch.allclose(net(out["feat"], only_fc=True), out["logits"])

    out["logits"].sum().backward()
    blocks = net.backbone.visual.transformer.resblocks
    frozen = [blocks[0], net.backbone.visual.conv1]
    tuned = [blocks[-1], blocks[-2], net.classifier]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in tuned for p in m.parameters())
    assert net.backbone.visual.proj.grad is not None
    # the text tower is not part of the net at all (its embeddings are a buffer)
    assert not any("transformer.resblocks" in n and "visual" not in n for n, _ in net.named_parameters())
    assert net.text_embeddings.shape == (3, net.num_features)


def test_layer_decay_groups_follow_blocks():
    net = BUILDERS["clip_tiny"](num_classes=2, pretrained=None, img_size=64, num_tuned_blocks=2)
    opt = get_optimizer(net, "AdamW", lr=1.0, weight_decay=0.1, layer_decay=0.5)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert len(lrs) >= 3 and max(lrs) == 1.0  # head at full lr, earlier blocks decayed
    names_with_grad = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == names_with_grad


def test_pretrain_path_loads_exact_weights(tmp_path):
    _ensure_configs()
    torch.manual_seed(123)
    reference = open_clip.create_model("clip-tiny", pretrained=None)
    path = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(999)  # a different random init, which loading must replace
    net = BUILDERS["clip_tiny"](num_classes=2, pretrained="none", pretrained_path=str(path), img_size=64)
    x = torch.randn(2, 3, 64, 64)
    reference.eval(), net.eval()
    with torch.no_grad():
        expected = reference.encode_image(x)
        got = net(x)["feat"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bad_weights_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="pretrain_path '.*missing.pt' does not exist"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained_path=str(tmp_path / "missing.pt"), img_size=64)
    bad = tmp_path / "bad.pt"
    torch.save({"unrelated": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="could not load CLIP weights from"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained_path=str(bad), img_size=64)
    with pytest.raises(ConfigError, match="pretrain_path: /path/to"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained="openai", img_size=64)


def test_num_tuned_blocks_checked():
    with pytest.raises(ConfigError, match=r"num_tuned_blocks must be in 1..4"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained=None, img_size=64, num_tuned_blocks=5)


def test_random_init_is_logged(caplog):
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained="none", img_size=64)
    assert "RANDOM INITIALISATION" in caplog.text
