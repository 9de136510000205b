"""Which demo CLIP build a run uses: the sha256 of its weights, from the build's card.

``python -m usb_cfsg_tools.demo_clip --out DIR`` writes ``DIR/demo_clip_tiny.pt`` and ``DIR/card.json``, whose
``weights.sha256`` identifies the build. The build differs between machines (and between rebuilds),
so every run records it (``demo_clip_sha256``, a config key) in its ``config.yaml``, its checkpoints
and its ``openset_metrics.json``, and ``python -m usb_cfsg_tools.compare`` refuses to tabulate runs of
different builds. Decisions:

* A run uses a demo CLIP when ``pretrain_path`` is the weights file a ``card.json`` in the same folder
  describes (the card's ``weights.file``), or when ``pretrain_pool`` names a card. The weights file
  must match its card's sha256 (else the card describes other weights: an error); both given, the
  two cards must name one build.
* A fresh run with ``demo_clip_sha256`` given (a saved ``config.yaml`` gives it) refuses another
  build than the one the card now describes, with both hashes: rerunning a saved config never
  silently switches builds. Not given (``none``): the current card's value is recorded.
* A resume keeps the checkpoint's value (its weights, not the card's, are what the run continues),
  with a notice when the card now describes another build; ``eval.py`` records the checkpoint's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from argparse import Namespace
from typing import Any, Dict, Optional

from ..datasets.pretrain_pool import CARD_FILE, load_card
from ..errors import ConfigError

logger = logging.getLogger("usb_cfsg")

#: The config key and the openset_metrics.json field.
KEY = "demo_clip_sha256"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUILD = "python -m usb_cfsg_tools.demo_clip --out DIR"


def sha256_file(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _card_sha(card: Dict[str, Any], where: str) -> str:
    sha = (card.get("weights") or {}).get("sha256")
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise ConfigError(f"the demo CLIP card {where!r} records no weights sha256; rebuild it with {_BUILD}")
    return sha


def weights_card(pretrain_path: Optional[str]) -> Optional[str]:
    """The ``card.json`` beside ``pretrain_path`` that describes that file, else None."""
    if not pretrain_path or not os.path.isfile(pretrain_path):
        return None
    card_path = os.path.join(os.path.dirname(os.path.abspath(pretrain_path)), CARD_FILE)
    if not os.path.isfile(card_path):
        return None
    card = load_card(card_path)
    if (card.get("weights") or {}).get("file") != os.path.basename(pretrain_path):
        return None
    return card_path


def demo_clip_sha256(pretrain_path: Optional[str], pretrain_pool: Optional[str]) -> Optional[str]:
    """The demo CLIP build ``pretrain_path`` / ``pretrain_pool`` name (module docstring), or None.

    Raises:
        ConfigError: the weights do not match their card, or the two cards name different builds.
    """
    from_weights = from_pool = None
    card_path = weights_card(pretrain_path)
    if card_path is not None:
        from_weights = _card_sha(load_card(card_path), card_path)
        actual = sha256_file(str(pretrain_path))
        if actual != from_weights:
            raise ConfigError(
                f"pretrain_path {pretrain_path!r} is not the build its card {card_path!r} describes (card sha256 "
                f"{from_weights}, file sha256 {actual}): the weights were replaced after the card was written. "
                f"Rebuild the demo CLIP with {_BUILD} (card and weights together)"
            )
    if pretrain_pool:
        from_pool = _card_sha(load_card(pretrain_pool), str(pretrain_pool))
    if from_weights and from_pool and from_weights != from_pool:
        raise ConfigError(
            f"pretrain_path {pretrain_path!r} is demo CLIP build {from_weights} but pretrain_pool {pretrain_pool!r} "
            f"is the card of build {from_pool}: give the weights and the card of one build (one folder written by "
            f"{_BUILD})"
        )
    return from_weights or from_pool


def record_demo_clip(args: Namespace, checkpoint_config: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Set ``args.demo_clip_sha256`` to the build the run uses (module docstring) and return it.

    Args:
        args: A resolved configuration.
        checkpoint_config: On resume, the checkpoint's configuration (its value wins); None for a fresh run.

    Raises:
        ConfigError: as :func:`demo_clip_sha256`; a fresh run whose given ``demo_clip_sha256`` is not the
            current build.
    """
    current = demo_clip_sha256(getattr(args, "pretrain_path", None), getattr(args, "pretrain_pool", None))
    given = getattr(args, KEY, None)
    if checkpoint_config is not None:
        stored = checkpoint_config.get(KEY)
        if stored and current and stored != current:
            logger.info(
                "the demo CLIP card now describes build %s; this run continues build %s (its checkpoint's weights)",
                current,
                stored,
            )
        setattr(args, KEY, stored or current)
        return getattr(args, KEY)
    if given is not None and given != current:
        source = (getattr(args, "config_sources", None) or {}).get(KEY, "the configuration")
        where = (
            f"the demo CLIP now given (pretrain_path {args.pretrain_path!r}, pretrain_pool {args.pretrain_pool!r}) "
            f"is build {current}"
            if current
            else f"this run uses no demo CLIP (pretrain_path {args.pretrain_path!r}, no card beside it; pretrain_pool "
            f"{args.pretrain_pool!r})"
        )
        raise ConfigError(
            f"demo_clip_sha256 {given} (from {source}) names the demo CLIP build this configuration ran with, but "
            f"{where}. Results of two builds are not comparable: point pretrain_path/pretrain_pool at build "
            f"{given}'s folder, or run with --demo_clip_sha256 none to record the current build instead"
        )
    setattr(args, KEY, current)
    return current


__all__ = ["KEY", "demo_clip_sha256", "record_demo_clip", "sha256_file", "weights_card"]
