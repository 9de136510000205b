"""CLIP weight files, downloads and the open_clip log filter: the plumbing behind :mod:`usb_cfsg.nets.clip`.

* Files: :func:`read_weights_file` reads OpenAI TorchScript archives (their weights only, no code run),
  open_clip / Hugging Face state dicts and big_vision ``.npz``; :func:`load_weights` loads one strictly.
* Downloads, offline first: a file already in the local caches (``~/.cache/huggingface``,
  ``~/.cache/clip``) is used without network access; otherwise the host is probed once
  (:data:`NETWORK_TIMEOUT_S`) and, without a connection or with ``HF_HUB_OFFLINE=1``, the build fails at
  once saying how to pass a local file (:func:`require_network`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
import urllib.request
import warnings
import zipfile
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError, did_you_mean

logger = logging.getLogger("usb_cfsg")

#: Seconds one probe of a download host may take before the host counts as unreachable.
NETWORK_TIMEOUT_S = 3.0
#: Non-weight entries of CLIP archives: OpenAI's TorchScript files carry the first three; a TorchScript
#: archive traced from an open_clip model carries the text tower's causal ``attn_mask`` buffer.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
#: Weight files of an open_clip model repository / folder, preferred first.
_HUB_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


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
