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
    net = BUILDERS[name](
        num_classes=3, pretrained="none", img_size=size, num_tuned_blocks=2, class_names=["cat", "dog", "bird"]
    )
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


# ------------------------------------------------------------------ weight formats (issue 10, item 4)


def _tiny_reference(seed: int, quick_gelu: bool = False):
    _ensure_configs()
    torch.manual_seed(seed)
    return open_clip.create_model("clip-tiny", pretrained=None, force_quick_gelu=quick_gelu).eval()


def write_openai_torchscript(model, path):
    """Save ``model``'s weights as OpenAI distributes CLIP: a TorchScript archive whose state dict has
    OpenAI's key names, conv/linear/attention weights in float16, and the three non-weight entries."""
    from open_clip.model import convert_weights_to_fp16

    class OpenAIStyle(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            for name, child in clip.named_children():
                self.add_module(name, child)
            for name, param in clip.named_parameters(recurse=False):
                self.register_parameter(name, param)
            self.register_buffer("input_resolution", torch.tensor(64))
            self.register_buffer("context_length", torch.tensor(77))
            self.register_buffer("vocab_size", torch.tensor(49408))

        def forward(self, x):
            return x * self.logit_scale.exp()

    import copy

    wrapper = OpenAIStyle(copy.deepcopy(model))
    convert_weights_to_fp16(wrapper)
    torch.jit.trace(wrapper, torch.ones(1)).save(str(path))
    return path


def _features(net, x):
    net.eval()
    with torch.no_grad():
        return net(x)["feat"]


def test_openai_torchscript_archive_equals_open_clips_features(tmp_path, caplog):
    archive = write_openai_torchscript(_tiny_reference(5, quick_gelu=True), tmp_path / "ViT-tiny.pt")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="TorchScript"):  # a weights-only load fails
        torch.load(archive, weights_only=True)
    torch.manual_seed(999)
    caplog.clear()
    with caplog.at_level("INFO"):
        net = BUILDERS["clip_tiny"](num_classes=2, pretrained="none", pretrained_path=str(archive), img_size=64)
    text = caplog.text
    # open_clip's own loader of OpenAI archives (a model with QuickGELU and the archive's weights)
    expected_model = open_clip.load_openai_model(str(archive), device="cpu", precision="fp32").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = expected_model.encode_image(x)
    torch.testing.assert_close(_features(net, x), expected, rtol=1e-4, atol=1e-5)
    # the activation matters: the same weights under plain GELU give other features
    gelu = BUILDERS["clip_tiny"](num_classes=2, pretrained="none", img_size=64)
    gelu.backbone.visual.load_state_dict(expected_model.visual.state_dict())
    assert not torch.allclose(_features(gelu, x), expected, rtol=1e-3, atol=1e-4)
    assert "weights loaded from" in text and str(archive) in text and "QuickGELU" in text
    assert "initialized randomly" not in text and "RANDOM INITIALISATION" not in text


@pytest.mark.parametrize("fmt", ["safetensors", "bin-wrapped"])
def test_open_clip_and_hf_weight_files_load_quietly(tmp_path, caplog, fmt):
    reference = _tiny_reference(7)
    state = reference.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a training checkpoint of a DDP-wrapped model
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    caplog.clear()
    with caplog.at_level("INFO"):
        net = BUILDERS["clip_tiny"](num_classes=2, pretrained="none", pretrained_path=str(path), img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.encode_image(x)
    torch.testing.assert_close(_features(net, x), expected, rtol=1e-4, atol=1e-5)
    assert "initialized randomly" not in caplog.text and "RANDOM INITIALISATION" not in caplog.text


def test_weights_of_another_architecture_say_what_the_file_holds(tmp_path):
    _ensure_configs()
    other = open_clip.create_model("clip-tiny", pretrained=None, force_image_size=32)
    state = {k: v for k, v in other.state_dict().items()}
    state["visual.conv1.weight"] = torch.zeros(96, 3, 8, 8)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"could not load CLIP weights from .*width 96, 4 blocks, patch 8"):
        BUILDERS["clip_tiny"](num_classes=2, pretrained_path=str(path), img_size=64)


# ------------------------------------------------------------------ offline tags fail fast


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No network (every connection refused), empty weight caches, HF offline mode off."""
    import socket

    import huggingface_hub.constants as hf_constants

    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return attempts


def test_offline_pretrained_tag_fails_in_seconds_without_retry_noise(no_network, capfd, caplog):
    import time

    start = time.monotonic()
    with caplog.at_level("DEBUG"):
        with pytest.raises(ConfigError) as info:
            BUILDERS["clip_vit_b32"](num_classes=2, pretrained="openai", img_size=64)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 5.0, elapsed
    assert "pretrained: openai for ViT-B-32" in message and "cannot be reached" in message
    assert "pretrain_path: /path/to" in message and "\n" not in message
    assert no_network  # the host was probed once per host, not retried
    assert len(no_network) <= 2
    out = capfd.readouterr()
    noise = out.out + out.err + caplog.text
    assert "Retrying" not in noise and "thrown while requesting" not in noise


def test_offline_mode_fails_without_probing(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set.*pretrain_path"):
        BUILDERS["clip_vit_b16"](num_classes=2, pretrained="openai", img_size=64)
    assert no_network == []


def test_cached_tag_weights_load_without_network(monkeypatch, no_network, tmp_path):
    """A tag whose file is in open_clip's URL cache loads offline; OpenAI tags build with QuickGELU."""
    from open_clip import pretrained as oc_pretrained

    url = "https://openaipublic.example/clip/models/0/clip-tiny-test.pt"
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "clip-tiny", {"testtag": {"url": url, "quick_gelu": True}})
    cache = tmp_path / "home" / ".cache" / "clip"
    cache.mkdir(parents=True)
    reference = _tiny_reference(11, quick_gelu=True)
    write_openai_torchscript(reference, cache / "clip-tiny-test.pt")
    net = BUILDERS["clip_tiny"](num_classes=2, pretrained="testtag", img_size=64)
    assert no_network == []
    x = torch.randn(2, 3, 64, 64)
    expected = open_clip.load_openai_model(str(cache / "clip-tiny-test.pt"), device="cpu", precision="fp32")
    with torch.no_grad():
        torch.testing.assert_close(_features(net, x), expected.eval().encode_image(x), rtol=1e-4, atol=1e-5)


def test_offline_hf_hub_model_fails_fast(no_network):
    with pytest.raises(ConfigError, match=r"clip_model hf-hub:someone/clip-model.*cannot be reached"):
        BUILDERS["open_clip"](num_classes=2, clip_model="hf-hub:someone/clip-model", pretrained="none", img_size=64)


# ------------------------------------------------------------------ net: open_clip, clip_model


def test_open_clip_net_builds_heads_on_the_named_architecture():
    torch.manual_seed(0)
    net = BUILDERS["open_clip"](
        num_classes=3, clip_model="ViT-B-16-quickgelu", pretrained="none", img_size=32, num_tuned_blocks=1, head="cfsg"
    )
    assert net.backbone.num_blocks == 12 and net.backbone.width == 768
    assert type(net.backbone.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    out = net(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 3) and out["relevance"].shape == (2, 4)


def test_local_dir_model_with_its_weights_and_normalisation(tmp_path):
    import json

    from safetensors.torch import save_file

    reference = _tiny_reference(3)
    folder = tmp_path / "my-clip"
    folder.mkdir()
    model_cfg = open_clip.get_model_config("clip-tiny")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    )
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "open_clip_model.safetensors")
    )
    name = f"local-dir:{folder}"
    net = BUILDERS["open_clip"](num_classes=2, clip_model=name, pretrained="openai", img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_features(net, x), reference.encode_image(x), rtol=1e-4, atol=1e-5)
    from argparse import Namespace

    mean, std = BUILDERS["open_clip"].mean_std_for(Namespace(clip_model=name, pretrained="openai"))
    assert mean == (0.5, 0.5, 0.5) and std == (0.25, 0.25, 0.25)
    assert BUILDERS["clip_vit_b16"].mean_std_for(Namespace(pretrained="openai"))[0] == pytest.approx(
        (0.48145466, 0.4578275, 0.40821073)
    )


@pytest.mark.parametrize(
    "clip_model,expected",
    [
        ("RN50", r"RN50: its image tower is a ResNet.*clip_model: ViT-B-16"),
        ("ViT-B-16-SigLIP", r"timm model 'vit_base_patch16_siglip_224'.*clip_model: ViT-B-16"),
        ("coca_ViT-B-32", r"pools with attention.*clip_model: ViT-B-16"),
        ("ViT-B-61", r"not an open_clip architecture, did you mean 'ViT-B-16'"),
        (None, r"net: open_clip needs clip_model"),
    ],
)
def test_unsupported_open_clip_models_are_clear_errors(clip_model, expected):
    from usb_cfsg.nets.clip import validate_clip_model

    with pytest.raises(ConfigError, match=expected):
        validate_clip_model("open_clip", clip_model)
    with pytest.raises(ConfigError, match=expected):
        BUILDERS["open_clip"](num_classes=2, clip_model=clip_model, pretrained="none", img_size=64)


def test_clip_model_with_a_fixed_net_is_an_error():
    with pytest.raises(ConfigError, match="read only with net: open_clip .*always builds ViT-B-16"):
        BUILDERS["clip_vit_b16"](num_classes=2, clip_model="ViT-L-14", pretrained="none", img_size=64)
    # naming the net's own architecture is fine
    BUILDERS["clip_tiny"](num_classes=2, clip_model="clip-tiny", pretrained="none", img_size=64)


def test_weights_from_checkpoint_builds_quietly_with_the_runs_activation(tmp_path, caplog, no_network):
    archive = write_openai_torchscript(_tiny_reference(5, quick_gelu=True), tmp_path / "w.pt")
    caplog.clear()
    with caplog.at_level("DEBUG"):
        net = BUILDERS["clip_tiny"](
            num_classes=2, pretrained="openai", pretrained_path=str(archive), img_size=64, weights_from_checkpoint=True
        )
        plain = BUILDERS["clip_tiny"](num_classes=2, pretrained="none", img_size=64, weights_from_checkpoint=True)
    assert no_network == []  # nothing fetched
    assert type(net.backbone.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(plain.backbone.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    assert "RANDOM INITIALISATION" not in caplog.text and "initialized randomly" not in caplog.text


def test_config_rejects_unknown_tags_and_towers_before_any_data_or_model():
    from usb_cfsg.config import build_config

    with pytest.raises(
        ConfigError,
        match=r"pretrained 'opneai' is not an open_clip tag of ViT-B-16, did you mean "
        r"'openai'",
    ):
        build_config(["--net", "clip_vit_b16", "--pretrained", "opneai"])
    with pytest.raises(ConfigError, match="RN50: its image tower is a ResNet"):
        build_config(["--net", "open_clip", "--clip_model", "RN50", "--pretrained", "none"])
    args = build_config(["--net", "open_clip", "--clip_model", "ViT-L-14-336", "--pretrained", "openai"])
    assert args.clip_model == "ViT-L-14-336"


def test_torchscript_archive_traced_from_open_clip_loads_and_other_keys_still_fail(tmp_path):
    reference = _tiny_reference(11)
    example = (torch.randn(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long))
    traced = torch.jit.trace(reference, example, strict=False, check_trace=False)
    assert "attn_mask" in traced.state_dict()  # the non-weight buffer such archives carry
    traced.save(str(tmp_path / "traced.pt"))
    net = BUILDERS["clip_tiny"](
        num_classes=2, pretrained="none", pretrained_path=str(tmp_path / "traced.pt"), img_size=64
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_features(net, x), reference.encode_image(x), rtol=1e-4, atol=1e-5)
    # any other unexpected entry is still an error that names it
    state = dict(reference.state_dict(), attn_mask=torch.zeros(77, 77), stray_buffer=torch.zeros(2))
    torch.save(state, tmp_path / "stray.pt")
    with pytest.raises(ConfigError, match="stray_buffer") as err:
        BUILDERS["clip_tiny"](num_classes=2, pretrained="none", pretrained_path=str(tmp_path / "stray.pt"), img_size=64)
    assert "attn_mask" not in str(err.value)
