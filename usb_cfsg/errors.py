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


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ", did you mean 'a', 'b'?" suffix for an unknown ``name``.

    Args:
        name: The name the user gave.
        choices: The valid names.
        n: How many suggestions at most.

    Returns:
        The suffix (starting with ", did you mean"), or "" when nothing is close.
    """
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    if not close:
        return ""
    return ", did you mean " + ", ".join(repr(c) for c in close) + "?"
