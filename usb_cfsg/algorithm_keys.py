"""A static copy of every registered algorithm's config keys, so configs parse without importing semilearn.

Reading an algorithm's keys (its ``get_argument()``) means importing the algorithm, i.e. torch and
semilearn: about 6 s on a 2-core machine. ``train.py --help``, unknown-key and type errors need only
the keys, so they are read from ``algorithm_keys.json`` (next to this file), which holds, for
each registered algorithm, its ``get_argument()`` entries and whether it has a
``validate_config`` hook. :func:`algorithm_class` returns a stand-in built from that copy; the
real class is imported the moment anything else is asked of the stand-in (e.g. its
``validate_config``). An algorithm missing from the copy, or one whose key parsers cannot be
copied (a custom callable), is imported as before.

The copy can never be silently stale: it records a fingerprint of every ``usb_cfsg`` source
file and semilearn's version, and is not used when they differ (the classes are imported as
before). Regenerate it after changing the package with::

    python -m usb_cfsg.algorithm_keys --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import one_of

CACHE_FILE = Path(__file__).with_name("algorithm_keys.json")
_cache: Optional[Dict[str, Any]] = None


def _str2bool(text: str) -> bool:  # named like semilearn's, which config.algorithm_specs recognises
    low = str(text).strip().lower()
    if low in ("true", "yes", "t", "y", "1"):
        return True
    if low in ("false", "no", "f", "n", "0"):
        return False
    raise ValueError(text)


_str2bool.__name__ = "str2bool"


def describe_argument(arg: Any) -> Optional[Dict[str, Any]]:
    """A JSON-able record of one ``SSL_Argument``, or None if its type cannot be copied."""
    typ = arg.type
    record: Dict[str, Any] = {"name": arg.name, "default": arg.default, "help": arg.help}
    if typ in (bool, int, float, str):
        record["type"] = typ.__name__
    elif getattr(typ, "__name__", "") == "str2bool":
        record["type"] = "str2bool"
    elif getattr(typ, "choices", None):
        record["type"] = "choice"
        record["choices"] = list(typ.choices)
    else:
        return None
    try:
        json.dumps(record)
    except TypeError:
        return None
    return record


def _type_of(record: Dict[str, Any]) -> Any:
    kind = record["type"]
    if kind == "choice":
        return one_of(*record["choices"])
    if kind == "str2bool":
        return _str2bool
    return {"bool": bool, "int": int, "float": float, "str": str}[kind]


class _Argument:
    """What ``config.algorithm_specs`` reads of an ``SSL_Argument``: name, type, default, help."""

    def __init__(self, record: Dict[str, Any]) -> None:
        self.name, self.default, self.help = record["name"], record["default"], record["help"]
        self.type = _type_of(record)


class LazyAlgorithm:
    """Stands in for an algorithm class: its keys come from the static copy; anything else imports it."""

    def __init__(self, name: str, record: Dict[str, Any]) -> None:
        self._name = name
        self._record = record
        self._real: Any = None

    def get_argument(self) -> List[_Argument]:
        return [_Argument(r) for r in self._record["arguments"]]

    def real(self) -> Any:
        """The registered class itself (imports torch and semilearn)."""
        if self._real is None:
            from .algorithms import get_algorithm_class

            self._real = get_algorithm_class(self._name)
        return self._real

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_name", "_record", "_real"):
            raise AttributeError(attr)
        if attr == "validate_config" and not self._record.get("validate_config", True):
            raise AttributeError(attr)  # known from the copy: no hook, nothing to import
        return getattr(self.real(), attr)

    def __repr__(self) -> str:
        return f"<algorithm {self._name!r} (keys from {CACHE_FILE.name})>"


def fingerprint() -> str:
    """sha256 of every usb_cfsg source file (path and content) and of semilearn's installed version."""
    from importlib import metadata

    root = Path(__file__).parent
    digest = hashlib.sha256()
    try:
        digest.update(metadata.version("semilearn").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"semilearn: not installed")
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_cache() -> Dict[str, Any]:
    """The static copy, or an empty one if the file is missing, unreadable or stale (see :func:`fingerprint`)."""
    global _cache
    if _cache is None:
        try:
            _cache = json.loads(CACHE_FILE.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            _cache = {}
        if _cache.get("fingerprint") != fingerprint():
            _cache = {}
    return _cache


def algorithm_class(name: str) -> Any:
    """A :class:`LazyAlgorithm` for ``name`` when the copy has it, else the imported class."""
    record = load_cache().get("algorithms", {}).get(name)
    if record is not None:
        return LazyAlgorithm(name, record)
    from .algorithms import get_algorithm_class

    return get_algorithm_class(name)


def live_records() -> Dict[str, Dict[str, Any]]:
    """Records of every registered algorithm, from the imported classes (those that can be copied)."""
    from .algorithms import algorithm_names, get_algorithm_class

    out: Dict[str, Dict[str, Any]] = {}
    for name in algorithm_names():
        cls = get_algorithm_class(name)
        try:
            args = cls.get_argument() or []
        except Exception:
            continue
        records = [describe_argument(a) for a in args]
        if any(r is None for r in records):
            continue
        out[name] = {"arguments": records, "validate_config": hasattr(cls, "validate_config")}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Write or check usb_cfsg/algorithm_keys.json.")
    p.add_argument("--write", action="store_true", help="regenerate the file from the registered algorithms")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from the live algorithms")
    a = p.parse_args(argv)
    live = {
        "algorithms": live_records(),
        "fingerprint": fingerprint(),
        "note": "generated by python -m usb_cfsg.algorithm_keys --write; do not edit",
    }
    if a.write:
        CACHE_FILE.write_text(json.dumps(live, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {CACHE_FILE} ({len(live['algorithms'])} algorithms)")
        return 0
    same = load_cache() == json.loads(json.dumps(live))
    print("up to date" if same else f"{CACHE_FILE.name} is stale: run python -m usb_cfsg.algorithm_keys --write")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
