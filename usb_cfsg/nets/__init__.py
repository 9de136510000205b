"""CLIP networks; importing this package makes them visible to semilearn's ``get_net_builder``."""

from __future__ import annotations

from ..errors import RegistryError
from .backbone import ClipBackbone, unwrap
from .cfsg import CFSGNet
from .clip import BUILDERS, CLIP_ARCHS, GENERIC_NET, NET_HEADS, OPENAI_MEAN, OPENAI_STD, ClipNet, build_clip_net

__all__ = [
    "BUILDERS",
    "CFSGNet",
    "CLIP_ARCHS",
    "GENERIC_NET",
    "NET_HEADS",
    "ClipBackbone",
    "ClipNet",
    "build_clip_net",
    "unwrap",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "register_nets",
]


def register_nets() -> None:
    """Expose our builders as attributes of ``semilearn.nets`` (where USB looks nets up).

    Raises:
        RegistryError: semilearn already has a different object under one of our names.
    """
    import semilearn.nets as usb_nets

    for name, builder in BUILDERS.items():
        existing = getattr(usb_nets, name, None)
        if existing is not None and existing is not builder and not getattr(existing, "usb_cfsg_clip", False):
            raise RegistryError(f"net {name!r} already exists in semilearn.nets ({existing!r})")
        setattr(usb_nets, name, builder)


register_nets()
