"""CLIP networks for USB: open_clip model creation, weight loading, the plain CLIP classifier net, builders.

Net names (``net:`` in a config) map to open_clip architectures:

=============  ==============  ===========================================
name           open_clip name  note
=============  ==============  ===========================================
clip_vit_b16   ViT-B-16        the paper's backbone
clip_vit_b32   ViT-B-32
clip_vit_l14   ViT-L-14
clip_tiny      clip-tiny       width 128, 4 blocks, patch 16: tests, CPU demo
open_clip      ``clip_model``  any open_clip ViT: an architecture name (``ViT-L-14-336``,
                               ``ViT-B-16-quickgelu``, ...), ``hf-hub:org/repo`` or
                               ``local-dir:/folder`` (``open_clip_config.json`` + weights)
=============  ==============  ===========================================

Our heads split a native open_clip ``VisionTransformer`` with class-token pooling (frozen trunk,
tuned blocks, value-path patch features). Architectures whose image tower is a ResNet (``RN50``),
a timm model (SigLIP, EVA) or uses attentional pooling (CoCa) are refused with a
:class:`~usb_cfsg.errors.ConfigError` that names ViT architectures to use instead.

Weights, in this order:

* ``pretrain_path``: a local file. OpenAI's TorchScript archives (``ViT-B-16.pt`` as OpenAI
  distributes them: only their weights are read and put into open_clip's model, built with
  OpenAI's QuickGELU, so the image features equal open_clip's for the same weights), open_clip /
  Hugging Face state dicts (``.bin``, ``.pt``, ``.pth``, ``.safetensors``) and big_vision ``.npz``.
* ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...). A file already in the
  local caches (``~/.cache/huggingface``, ``~/.cache/clip``) is used without any network access;
  otherwise the download host is probed once (3 s) and, without a connection (or with
  ``HF_HUB_OFFLINE=1``), the build fails at once with a message saying how to pass a local file.
  The activation (GELU or QuickGELU) follows the tag, as open_clip's tag table says.
* neither (``pretrained: none``): random initialisation, logged as a warning.

A builder is called by USB as ``builder(num_classes=, pretrained=, pretrained_path=)`` and by our
engine with more keywords (``img_size``, ``num_tuned_blocks``, ``class_names``, ``clip_model``, ...).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError, did_you_mean
from ..modules.cosine_classifier import CosineClassifier
from ..registry import Registry
from .backbone import ClipBackbone
from .text import ClassTextEmbeddings, clip_text_embeddings, minilm_text_embeddings
from .zero_shot import ZeroShotMixin, build_prior

logger = logging.getLogger("usb_cfsg")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered_configs = False

#: net name -> open_clip architecture name
CLIP_ARCHS: Dict[str, str] = {
    "clip_vit_b16": "ViT-B-16",
    "clip_vit_b32": "ViT-B-32",
    "clip_vit_l14": "ViT-L-14",
    "clip_tiny": "clip-tiny",
}
#: The net whose open_clip model is the config key ``clip_model``.
GENERIC_NET = "open_clip"
#: Seconds one probe of a download host may take before the host counts as unreachable.
NETWORK_TIMEOUT_S = 3.0
#: Non-weight entries of CLIP archives: OpenAI's TorchScript files carry the first three; a TorchScript
#: archive traced from an open_clip model carries the text tower's causal ``attn_mask`` buffer.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OPEN_CLIP_CONFIG = "open_clip_config.json"
#: Weight files of an open_clip model repository / folder, preferred first.
_HUB_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_VIT_FIX = (
    "use an open_clip ViT architecture instead, e.g. net: open_clip with clip_model: ViT-B-16, "
    "ViT-B-16-quickgelu, ViT-L-14 or ViT-L-14-336 (open_clip.list_models() lists them)"
)

#: head name -> class building a network on a ClipBackbone (``clip`` here, ``cfsg`` in cfsg.py)
NET_HEADS: Registry[Callable[..., nn.Module]] = Registry("network head")


def _ensure_configs() -> None:
    global _registered_configs
    if not _registered_configs:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered_configs = True


def normalize_pretrained(pretrained: Union[str, bool, None]) -> Optional[str]:
    """USB passes booleans (``use_pretrain``); we take open_clip tags. ``True`` means ``openai``."""
    if pretrained is True:
        return "openai"
    if pretrained in (False, None) or str(pretrained).lower() in ("none", "null", ""):
        return None
    return str(pretrained)


# ----------------------------------------------------------------------------- which model


def _none_if_empty(value: Optional[str]) -> Optional[str]:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return str(value).strip()


def resolve_clip_model(net: str, clip_model: Optional[str]) -> str:
    """The open_clip model name a net builds: fixed for ``clip_*`` nets, ``clip_model`` for ``open_clip``.

    Raises:
        ConfigError: ``net: open_clip`` without ``clip_model``, or ``clip_model`` given with a
            fixed net that builds another architecture.
    """
    name = _none_if_empty(clip_model)
    if net == GENERIC_NET:
        if name is None:
            raise ConfigError(
                "net: open_clip needs clip_model: <open_clip model>, e.g. clip_model: ViT-B-16 "
                "(an architecture of open_clip.list_models()), hf-hub:org/repo or local-dir:/folder"
            )
        return name
    if net not in CLIP_ARCHS:
        raise ConfigError(f"unknown CLIP net {net!r}{did_you_mean(net, [*CLIP_ARCHS, GENERIC_NET])}")
    arch = CLIP_ARCHS[net]
    if name is not None and name != arch:
        raise ConfigError(
            f"clip_model: {name} is read only with net: open_clip (net: {net} always builds {arch}); "
            f"set net: open_clip to build {name}, or drop clip_model"
        )
    return arch


def _schema(name: str) -> Tuple[Optional[str], str]:
    """``('hf-hub' | 'local-dir' | None, identifier)`` of an open_clip model name."""
    for prefix in ("hf-hub:", "local-dir:"):
        if name.startswith(prefix):
            ident = name[len(prefix) :].strip()
            if not ident:
                raise ConfigError(
                    f"clip_model {name!r} names no {prefix[:-1]} location, e.g. {prefix}"
                    f"{'org/repo' if prefix == 'hf-hub:' else '/path/to/folder'}"
                )
            return prefix[:-1], ident
    return None, name


def check_vit_tower(name: str, model_cfg: Dict[str, Any]) -> None:
    """Refuse open_clip models whose image tower our heads cannot split, naming the fix.

    Our heads need open_clip's own ``VisionTransformer`` with class-token pooling: its blocks are
    split into a frozen trunk and tuned blocks, and the semantic filtering module reads its patch
    tokens and last block's value path.

    Raises:
        ConfigError: ResNet tower (``RN50``), timm tower (SigLIP, EVA, ...), attentional pooling (CoCa).
    """
    vision = model_cfg.get("vision_cfg") or {}
    if "timm_model_name" in vision:
        raise ConfigError(
            f"clip_model {name}: its image tower is the timm model {vision['timm_model_name']!r}; "
            f"the clip and cfsg heads split only open_clip's own VisionTransformer (SigLIP, EVA and "
            f"other timm towers are not supported); {_VIT_FIX}"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(
            f"clip_model {name}: its image tower is a ResNet (layers {list(vision['layers'])}), which "
            f"has no ViT patch tokens for the semantic filtering module nor blocks to split; {_VIT_FIX}"
        )
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or "multimodal_cfg" in model_cfg:
        raise ConfigError(
            f"clip_model {name}: its image tower pools with attention, not with a class token, "
            f"which the clip and cfsg heads need; {_VIT_FIX}"
        )


def _builtin_config(name: str) -> Dict[str, Any]:
    import open_clip

    _ensure_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(
            f"clip_model {name!r} is not an open_clip architecture"
            f"{did_you_mean(name, open_clip.list_models())} (open_clip.list_models() lists them; "
            f"or give hf-hub:org/repo or local-dir:/folder)"
        )
    return cfg


def _read_config_file(path: str, name: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"clip_model {name}: cannot read {path}: {exc}") from None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
        raise ConfigError(f"clip_model {name}: {path} is not an open_clip config (no model_cfg.vision_cfg)")
    return data


def _config_file(name: str, download: bool) -> Optional[str]:
    """Path of the ``open_clip_config.json`` of an ``hf-hub:`` / ``local-dir:`` model (None: not here)."""
    schema, ident = _schema(name)
    if schema == "local-dir":
        folder = Path(ident)
        if not folder.is_dir():
            raise ConfigError(
                f"clip_model {name}: folder {ident!r} does not exist; local-dir: needs a folder with "
                f"{_OPEN_CLIP_CONFIG} and the weights"
            )
        path = folder / _OPEN_CLIP_CONFIG
        if not path.is_file():
            raise ConfigError(
                f"clip_model {name}: {path} is missing; local-dir: needs a folder with "
                f"{_OPEN_CLIP_CONFIG} (as open_clip's hf-hub repositories have) and the weights"
            )
        return str(path)
    cached = _hub_cached(ident, (_OPEN_CLIP_CONFIG,))
    if cached or not download:
        return cached
    return _hub_download(ident, _OPEN_CLIP_CONFIG, f"clip_model {name}")


def validate_clip_model(
    net: str, clip_model: Optional[str], pretrained: Union[str, bool, None] = None, pretrain_path: Optional[str] = None
) -> str:
    """Check, without building anything or using the network, that a net can be built.

    Args:
        net: The ``net`` key.
        clip_model: The ``clip_model`` key.
        pretrained: The ``pretrained`` key: for an architecture with open_clip tags it must be one of
            them (or a file), unless ``pretrain_path`` is given; ``hf-hub:`` / ``local-dir:`` models
            bring their own weights. Architectures without any tag (``clip-tiny``) are left to the
            builder, which reports the missing weights.
        pretrain_path: The ``pretrain_path`` key (not checked here: eval.py may run where the
            training machine's file is absent).

    Returns:
        The open_clip model name.

    Raises:
        ConfigError: See :func:`resolve_clip_model` and :func:`check_vit_tower`; unknown
            architecture; unknown pretrained tag.
    """
    name = resolve_clip_model(net, clip_model)
    schema, _ = _schema(name)
    if schema is None:
        check_vit_tower(name, _builtin_config(name))
        tag = normalize_pretrained(pretrained)
        if tag and not _none_if_empty(pretrain_path):
            import open_clip

            known = [t for a, t in open_clip.list_pretrained() if a == name]
            if known and not open_clip.get_pretrained_cfg(name, tag) and not os.path.isfile(tag):
                raise ConfigError(_unknown_tag_message(name, tag))
    else:
        path = _config_file(name, download=False)
        if path is not None:
            data = _read_config_file(path, name)
            check_vit_tower(name, data.get("model_cfg", data))
    return name


# ----------------------------------------------------------------------------- weights files


def is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (as OpenAI's CLIP ``.pt`` files are), not a pickled state dict."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_weights_file(path: str) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Read a CLIP weights file into a state dict, without running any code from it.

    OpenAI's TorchScript archives are opened with ``torch.jit.load`` and only their state dict is
    kept (the non-weight entries ``input_resolution``, ``context_length``, ``vocab_size`` and, in archives
    traced from open_clip models, ``attn_mask`` dropped; any other key the model lacks stays an error).
    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``
    (a ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are removed).

    Returns:
        ``(state_dict, is_openai_torchscript)``: the flag is true for OpenAI's own archives (they carry
        ``input_resolution``), whose models use QuickGELU.

    Raises:
        ConfigError: The file cannot be read or holds no state dict; the message names the file.
    """
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated, but OpenAI's files need it
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise ConfigError(f"could not read the TorchScript archive {path!r}: {exc}") from None
        raw = module.state_dict()
        state = {k: v.detach() for k, v in raw.items() if k not in _OPENAI_EXTRA_KEYS}
        # OpenAI's archives (QuickGELU) carry input_resolution; one traced from an open_clip model does not
        return state, "input_resolution" in raw
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"could not read CLIP weights from {path!r}: {' '.join(str(exc).split())[:400]}; "
            f"expected an open_clip/Hugging Face state dict (.bin, .pt, .safetensors) or an OpenAI "
            f"CLIP TorchScript archive"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"could not load CLIP weights from {path!r}: it holds a {type(obj).__name__}, not a state dict of tensors"
        )
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}, False


def _describe_vision_weights(state: Dict[str, torch.Tensor]) -> str:
    conv = state.get("visual.conv1.weight")
    if conv is None or conv.dim() != 4:
        return "no ViT image tower (visual.conv1.weight)"
    blocks = {k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}
    pos = state.get("visual.positional_embedding")
    grid = int(round((pos.shape[0] - 1) ** 0.5)) if pos is not None else 0
    return (
        f"a ViT image tower of width {conv.shape[0]}, {len(blocks)} blocks, patch {conv.shape[-1]}, "
        f"{grid * conv.shape[-1]} px"
    )


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], name: str, source: str) -> None:
    """Load a CLIP state dict into an open_clip model strictly, with open_clip's format conversions.

    Conversions as ``open_clip.load_checkpoint`` does them: third-party layouts, the old text-tower
    layout, ``logit_scale``/``logit_bias`` shapes, and positional embeddings resized to the model's
    input size.

    Raises:
        ConfigError: Keys or shapes do not match ``name``; the message describes the file's tower.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or k not in _OPENAI_EXTRA_KEYS}  # non-weight entries
    try:
        state = convert_state_dict(model, dict(state))
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        scale = getattr(model, "logit_scale", None)
        if "logit_scale" in state and scale is not None and scale.ndim != state["logit_scale"].ndim:
            state["logit_scale"] = state["logit_scale"].reshape(scale.shape)
        bias = getattr(model, "logit_bias", None)
        if bias is not None and "logit_bias" not in state:
            state["logit_bias"] = torch.zeros_like(bias)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"could not load CLIP weights from {source!r} into {name}: "
            f"{detail[:400]}{'...' if len(detail) > 400 else ''} (the file holds "
            f"{_describe_vision_weights(state)}; give the clip_model / net these weights are for)"
        ) from None


# ----------------------------------------------------------------------------- downloads, offline first


def _hub_cache() -> Optional[str]:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return str(constants.HF_HUB_CACHE)


def _offline_mode() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _hub_cached(repo_id: str, filenames: Sequence[str]) -> Optional[str]:
    """The first of ``filenames`` of a Hugging Face repository already in the local cache (filesystem only)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=_hub_cache())
        except Exception:
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_endpoint_host() -> Tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urllib.parse.urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


def _probe_target(host: str, port: int) -> Tuple[str, int]:
    """Where a connection to ``host`` goes: the host, or the HTTPS proxy from the environment."""
    proxy = urllib.request.getproxies_environment().get("https")
    bypass = getattr(urllib.request, "proxy_bypass_environment", lambda _host: False)  # not in typeshed
    if proxy and not bypass(host):
        parsed = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or 80
    return host, port


def require_network(hosts: Sequence[Tuple[str, int]], what: str, fix: str) -> None:
    """Fail at once, with ``fix``, when a download cannot work (offline mode or no host reachable).

    One TCP connection attempt per host (or to the HTTPS proxy), :data:`NETWORK_TIMEOUT_S` each,
    instead of the dozens of retries a download library makes before giving up.

    Raises:
        ConfigError: Offline mode is set, or no host accepts a connection.
    """
    if _offline_mode():
        raise ConfigError(f"{what}: the weights are not in the local cache and HF_HUB_OFFLINE is set; {fix}")
    errors = []
    for host, port in hosts:
        target = _probe_target(host, port)
        try:
            socket.create_connection(target, timeout=NETWORK_TIMEOUT_S).close()
            return
        except OSError as exc:
            errors.append(f"{target[0]}:{target[1]}: {exc}")
    raise ConfigError(
        f"{what}: the weights are not in the local cache and the download host cannot be reached "
        f"({'; '.join(errors)}); {fix}"
    )


def _offline_fix(name: str, tag: Optional[str]) -> str:
    how = f"open_clip.create_model('{name}', pretrained='{tag}')" if tag else f"open_clip.create_model('{name}')"
    return (
        f"on a machine without internet, download the weights elsewhere (e.g. {how} fills ~/.cache/huggingface, "
        f"which you can copy here) and pass pretrain_path: /path/to/open_clip_model.safetensors (OpenAI's "
        f"ViT-B-16.pt archives work too); or set pretrained: none for an explicit random init"
    )


def _hub_download(repo_id: str, filename: str, what: str, tag: Optional[str] = None) -> str:
    from huggingface_hub import hf_hub_download

    require_network([_hub_endpoint_host()], what, _offline_fix(f"hf-hub:{repo_id}", tag))
    try:
        return str(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=_hub_cache()))
    except Exception as exc:
        raise ConfigError(
            f"{what}: could not download {filename} of {repo_id} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); {_offline_fix(f'hf-hub:{repo_id}', tag)}"
        ) from None


def _hub_weights(repo_id: str, name: str) -> str:
    cached = _hub_cached(repo_id, _HUB_WEIGHT_FILES)
    if cached:
        return cached
    import open_clip

    require_network([_hub_endpoint_host()], f"clip_model {name}", _offline_fix(name, None))
    try:
        return str(open_clip.download_pretrained_from_hf(repo_id, cache_dir=_hub_cache()))
    except Exception as exc:
        raise ConfigError(
            f"clip_model {name}: could not download its weights ({exc}); {_offline_fix(name, None)}"
        ) from None


def _url_cache_file(url: str) -> str:
    return os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))


def _unknown_tag_message(arch: str, tag: str) -> str:
    import open_clip

    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    return (
        f"pretrained {tag!r} is not an open_clip tag of {arch}{did_you_mean(tag, tags)} (known tags of "
        f"{arch}: {tags or 'none'}); pass a local weights file as pretrain_path: "
        f"/path/to/open_clip_model.safetensors, or set pretrained: none for an explicit random init"
    )


def _pretrained_file(arch: str, tag: str) -> Tuple[str, bool]:
    """Local file of an open_clip pretrained tag (cache first, download only when a host answers).

    Returns:
        ``(path, quick_gelu)``: the weights file and whether the tag's model uses QuickGELU.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        if os.path.isfile(tag):  # open_clip also accepts a file as `pretrained`
            return tag, is_torchscript_archive(tag)
        raise ConfigError(_unknown_tag_message(arch, tag))
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if cfg.get("file"):
        return str(cfg["file"]), quick_gelu
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        cached = _hub_cached(repo_id, names)
        if cached:
            return cached, quick_gelu
    if url and os.path.isfile(_url_cache_file(url)):
        return _url_cache_file(url), quick_gelu
    hosts = ([_hub_endpoint_host()] if hub else []) + (
        [(urllib.parse.urlparse(url).hostname or "", 443)] if url else []
    )
    what = f"pretrained: {tag} for {arch}"
    require_network(hosts, what, _offline_fix(arch, tag))
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as exc:
        raise ConfigError(
            f"could not fetch pretrained weights {tag!r} for {arch} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); {_offline_fix(arch, tag)}"
        ) from None
    return str(path), quick_gelu


class _DropOpenClipNoise(logging.Filter):
    """open_clip's root-logger lines that would mislead: we load the weights ourselves and say so."""

    _NOISE = (
        "No pretrained weights loaded",
        "initialized randomly",
        "no CLIP weights found",
        "skipping assignment due to load_weights=False",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self._NOISE)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    noise = _DropOpenClipNoise()
    root = logging.getLogger()
    root.addFilter(noise)
    try:
        yield
    finally:
        root.removeFilter(noise)


def _activation_from_config(name: str, pretrained: Optional[str], pretrain_path: Optional[str]) -> bool:
    """QuickGELU for weights that were trained with it (OpenAI's), from the config alone."""
    if pretrain_path:
        if os.path.isfile(pretrain_path):
            return is_torchscript_archive(pretrain_path)
        logger.warning(
            "pretrain_path %s is not here: building %s with its configured activation; if the run "
            "was trained from an OpenAI TorchScript archive, results differ without that file",
            pretrain_path,
            name,
        )
        return False
    if pretrained and _schema(name)[0] is None:
        import open_clip

        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    return False


def create_clip(
    arch: str,
    pretrained: Optional[str],
    pretrain_path: Optional[str],
    img_size: int,
    weights_from_checkpoint: bool = False,
):
    """Create an open_clip model and its tokenizer, loading weights as asked (see the module docstring).

    Args:
        arch: open_clip model name: an architecture, ``hf-hub:org/repo`` or ``local-dir:/folder``.
        pretrained: open_clip pretrained tag (e.g. ``openai``) or None. For ``hf-hub:`` and
            ``local-dir:`` models any value but None means "the weights that come with the model".
        pretrain_path: A local weights file; takes precedence over ``pretrained``.
        img_size: Input resolution (positional embeddings are resized when loading).
        weights_from_checkpoint: The caller loads trained weights next (eval.py, predict.py): no
            weights are read or downloaded here and no random-initialisation warning is logged;
            the activation still follows ``pretrained`` / ``pretrain_path``.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ConfigError: Unknown or unsupported model, weights missing, unreachable or not loadable,
            each with how to fix it.
    """
    import open_clip

    _ensure_configs()
    schema, ident = _schema(arch)
    if schema is None:
        check_vit_tower(arch, _builtin_config(arch))
        source_name = arch
    else:
        config_path = _config_file(arch, download=True)
        assert config_path is not None  # download=True raises instead of returning None
        data = _read_config_file(config_path, arch)
        check_vit_tower(arch, data.get("model_cfg", data))
        source_name = f"local-dir:{os.path.dirname(config_path)}"

    state: Optional[Dict[str, torch.Tensor]] = None
    quick_gelu = False
    source = ""
    if weights_from_checkpoint:
        quick_gelu = _activation_from_config(arch, pretrained, pretrain_path)
    elif pretrain_path:
        if not os.path.isfile(pretrain_path):
            raise ConfigError(
                f"pretrain_path {pretrain_path!r} does not exist; give the path of an open_clip or "
                f"OpenAI CLIP weights file for {arch}"
            )
        state, quick_gelu = read_weights_file(pretrain_path)
        source = pretrain_path
    elif pretrained:
        if schema is None:
            source, quick_gelu = _pretrained_file(arch, pretrained)
        elif schema == "hf-hub":
            source = _hub_weights(ident, arch)
        else:
            found = [Path(ident) / f for f in _HUB_WEIGHT_FILES if (Path(ident) / f).is_file()]
            if not found:
                raise ConfigError(
                    f"clip_model {arch}: no weights file ({', '.join(_HUB_WEIGHT_FILES)}) in {ident}; "
                    f"add one, pass pretrain_path: /path/to/weights, or set pretrained: none"
                )
            source = str(found[0])
        state, is_openai = read_weights_file(source)
        quick_gelu = quick_gelu or is_openai

    with _quiet_open_clip():
        try:
            kwargs: Dict[str, Any] = dict(force_image_size=img_size, force_quick_gelu=quick_gelu)
            if schema is None:
                model = open_clip.create_model(source_name, pretrained=None, **kwargs)
            else:
                model = open_clip.create_model(source_name, load_weights=False, **kwargs)
            tokenizer = open_clip.get_tokenizer(source_name)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"open_clip could not build {arch}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
            ) from None
    activation = "QuickGELU" if quick_gelu else "its configured activation"
    if state is not None:
        load_weights(model, state, arch, source)
        logger.info("CLIP %s: weights loaded from %s (%s)", arch, source, activation)
    elif weights_from_checkpoint:
        logger.debug("CLIP %s built for weights from a checkpoint (%s)", arch, activation)
    else:
        logger.warning(
            "CLIP %s: RANDOM INITIALISATION (pretrained: none) - results are not those of a pretrained CLIP", arch
        )
    return model, tokenizer


def clip_mean_std(
    net: str, clip_model: Optional[str] = None, pretrained: Union[str, bool, None] = None
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Input normalisation of a CLIP net: the pretrained tag's or the model folder's, else OpenAI's.

    SigLIP-style tags use 0.5 / 0.5, OpenAI and LAION tags OpenAI's statistics; ``hf-hub:`` and
    ``local-dir:`` models take ``preprocess_cfg`` of their ``open_clip_config.json``.
    """
    import open_clip

    try:
        name = resolve_clip_model(net, clip_model)
        schema, _ = _schema(name)
        if schema is None:
            tag = normalize_pretrained(pretrained)
            cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
        else:
            path = _config_file(name, download=True)
            cfg = _read_config_file(path, name).get("preprocess_cfg", {}) if path else {}
    except ConfigError:
        return OPENAI_MEAN, OPENAI_STD  # the builder reports the problem
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return OPENAI_MEAN, OPENAI_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def class_text_embeddings(
    clip_model: nn.Module,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str],
    text_encoder: str,
    seed: int = 0,
) -> ClassTextEmbeddings:
    """Build the seen classes' text embeddings with the chosen encoder."""
    visual: Any = clip_model.visual
    joint_dim = int(visual.proj.shape[1])
    if text_encoder == "clip":
        return ClassTextEmbeddings(
            clip_text_embeddings(clip_model, tokenizer, class_names, templates), joint_dim, learned_projection=False
        )
    if text_encoder == "minilm":
        return ClassTextEmbeddings(
            minilm_text_embeddings(class_names, templates), joint_dim, learned_projection=True, seed=seed
        )
    raise ConfigError(f"text_encoder must be clip or minilm, got {text_encoder!r}")


@NET_HEADS.register("clip")
class ClipNet(ZeroShotMixin, nn.Module):
    """CLIP image encoder + cosine classifier, to USB's net contract.

    ``forward(x, only_fc=False, only_feat=False) -> {'logits': [B, K], 'feat': [B, D]}``; ``feat`` is
    the image embedding in CLIP's joint space. The classifier is initialised from the class-name
    text embeddings, which are kept as a buffer (``text_embeddings``) so checkpoints carry them.
    With ``zs_weight`` α > 0 the net keeps the pretrained zero-shot classifier
    (:mod:`usb_cfsg.nets.zero_shot`): ``logits`` are ``(1 - α) * trained + α * zero-shot`` and the
    output also holds ``logits_zs``.

    Args:
        backbone: The split vision tower.
        text: The seen classes' text embeddings.
        num_classes: K.
        logit_scale: Scale of the cosine classifier (and of the zero-shot logits).
        zs_weight: α of the zero-shot prior (0: none).
        zs_mode: ``output`` or ``weights`` (WiSE-FT's output- or weight-space ensemble).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        text: ClassTextEmbeddings,
        num_classes: int,
        logit_scale: float = 30.0,
        zs_weight: float = 0.0,
        zs_mode: str = "output",
        **unused: Any,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            emb = text()
        if emb.shape[0] != num_classes:
            raise ConfigError(f"got {emb.shape[0]} class names for num_classes={num_classes}")
        self.register_buffer("text_embeddings", emb.detach().clone())
        self.classifier = CosineClassifier.from_text(emb, scale=logit_scale)
        self.num_features = backbone.joint_dim
        self.zero_shot = build_prior(backbone, text, zs_weight, zs_mode, logit_scale)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(feat [B, D], trunk tokens H [B, 1 + N, W])`` of images ``x``."""
        h = self.backbone.trunk(x)
        return self.backbone.project(self.backbone.tuned(h)[:, :1])[:, 0], h

    def closed_logits(self, feat: torch.Tensor, h: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"logits": ...}`` of the cosine classifier, ensembled with the prior (plus ``logits_zs``) if any."""
        logits, zs = self.with_prior(self.classifier(feat), h)
        return {"logits": logits} if zs is None else {"logits": logits, "logits_zs": zs}

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        if only_fc:
            return self.classifier(x)
        feat, h = self.encode(x)
        if only_feat:
            return feat
        return {**self.closed_logits(feat, h), "feat": feat}

    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict:
        return self.backbone.group_matcher(coarse, prefix=f"{prefix}backbone.")

    def no_weight_decay(self) -> set:
        return self.backbone.no_weight_decay(prefix="backbone.")


def build_clip_net(
    arch: str,
    num_classes: int,
    pretrained: Union[str, bool, None] = None,
    pretrained_path: Optional[str] = None,
    *,
    head: str = "clip",
    img_size: int = 224,
    num_tuned_blocks: int = 4,
    class_names: Optional[Sequence[str]] = None,
    prompt_templates: Optional[Sequence[str]] = None,
    text_encoder: str = "clip",
    seed: int = 0,
    weights_from_checkpoint: bool = False,
    **head_kwargs: Any,
) -> nn.Module:
    """Create a CLIP network of the given head on an open_clip architecture.

    Args:
        arch: open_clip model name (architecture, ``hf-hub:org/repo`` or ``local-dir:/folder``).
        num_classes: K, the number of seen classes.
        pretrained: open_clip tag, USB boolean, or None for random init.
        pretrained_path: Local weights file (wins over ``pretrained``).
        head: ``clip`` (ClipNet) or ``cfsg`` (the CFSG network).
        img_size: Input resolution.
        num_tuned_blocks: m, trainable last blocks.
        class_names: Seen class names (label order); default ``class 0 .. class K-1``.
        prompt_templates: Prompt templates; default ``("a photo of a {}.",)``.
        text_encoder: ``clip`` or ``minilm`` (see :mod:`usb_cfsg.nets.text`).
        seed: Seed of any random initialisation outside open_clip's.
        weights_from_checkpoint: Trained weights are loaded next (eval.py, predict.py): read and
            download no CLIP weights, log no random-initialisation warning.
        **head_kwargs: Passed to the head class.
    """
    names = list(class_names) if class_names else [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names given for num_classes={num_classes}")
    templates = tuple(prompt_templates) if prompt_templates else ("a photo of a {}.",)
    model, tokenizer = create_clip(
        arch,
        normalize_pretrained(pretrained),
        pretrained_path,
        img_size,
        weights_from_checkpoint=weights_from_checkpoint,
    )
    text = class_text_embeddings(model, tokenizer, names, templates, text_encoder, seed)
    backbone = ClipBackbone(model.visual, num_tuned_blocks)
    if (
        head_kwargs.get("sfm_scales") == "clip"
    ):  # the checkpoint's own logit scale (a stored buffer replaces it on load)
        head_kwargs["clip_logit_scale"] = float(model.logit_scale.detach().exp())
    net: Any = NET_HEADS.get(head)(backbone, text, num_classes, **head_kwargs)
    net.class_names = names
    return net


def _make_builder(name: str) -> Callable[..., nn.Module]:
    def builder(
        num_classes: int,
        pretrained: Union[str, bool, None] = None,
        pretrained_path: Optional[str] = None,
        clip_model: Optional[str] = None,
        **kwargs: Any,
    ) -> nn.Module:
        return build_clip_net(resolve_clip_model(name, clip_model), num_classes, pretrained, pretrained_path, **kwargs)

    def mean_std_for(args: Any) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        return clip_mean_std(name, getattr(args, "clip_model", None), getattr(args, "pretrained", None))

    arch = CLIP_ARCHS.get(name, "the open_clip model named by clip_model")
    builder.__name__ = name
    builder.__qualname__ = name
    builder.__doc__ = f"USB net builder: CLIP {arch} (see usb_cfsg.nets.clip.build_clip_net)."
    builder.mean = OPENAI_MEAN  # type: ignore[attr-defined]
    builder.std = OPENAI_STD  # type: ignore[attr-defined]
    builder.mean_std_for = mean_std_for  # type: ignore[attr-defined]
    builder.usb_cfsg_clip = True  # type: ignore[attr-defined]
    return builder


BUILDERS: Dict[str, Callable[..., nn.Module]] = {name: _make_builder(name) for name in [*CLIP_ARCHS, GENERIC_NET]}
