"""Exceptions and the "did you mean" helper shared by every user-facing error."""

from __future__ import annotations

import difflib
from typing import Iterable


class UsbCfsgError(Exception):
    """Base class of every error this package raises on bad user input."""


class ConfigError(UsbCfsgError, ValueError):
    """A configuration key or value is invalid."""


class DatasetError(UsbCfsgError, ValueError):
    """A dataset is missing, malformed or cannot satisfy the requested split."""


class CheckpointError(UsbCfsgError, RuntimeError):
    """A checkpoint cannot be written, read or used."""


class RegistryError(UsbCfsgError, KeyError):
    """A name is unknown to a registry or registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


#: Names other frameworks use for a key, and ours (offered when the user's name is one of them).
ALIASES = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "base_lr": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "epochs": "epoch",
    "num_epochs": "epoch",
    "iters": "num_train_iter",
    "num_iters": "num_train_iter",
    "max_iter": "num_train_iter",
    "optimizer": "optim",
    "model": "net",
    "arch": "net",
    "resume_from": "load_path",
    "checkpoint": "load_path",
    "output_dir": "save_dir",
}


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ", did you mean 'a', 'b'?" suffix for an unknown ``name``.

    Suggestions, best first: the key :data:`ALIASES` maps ``name`` to (``learning_rate`` -> ``lr``);
    valid names that are a whole ``_``-separated part at the start or end of ``name`` (``lr`` for
    ``lr_typo`` and ``lr_rate``); then the closest spellings (difflib, case-insensitive as a fallback).

    Args:
        name: The name the user gave.
        choices: The valid names.
        n: How many suggestions at most.

    Returns:
        The suffix (starting with ", did you mean"), or "" when nothing is close.
    """
    choices = list(choices)
    valid = set(choices)
    low = name.lower()
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(low, list(lowered), n=n, cutoff=0.5)]
    typo = [c for c in close if difflib.SequenceMatcher(None, low, c.lower()).ratio() >= 0.8]  # a misspelling
    found = [ALIASES[low]] if ALIASES.get(low) in valid else []
    found += typo
    found += sorted(
        (c for c in choices if len(c) >= 2 and (low.startswith(c.lower() + "_") or low.endswith("_" + c.lower()))),
        key=lambda c: -len(c),
    )
    found += close
    found = list(dict.fromkeys(found))[:n]
    if not found:
        return ""
    return ", did you mean " + ", ".join(repr(c) for c in found) + "?"
