"""Our algorithms, registered with semilearn's ``ALGORITHMS`` registry, and a strict lookup.

``import usb_cfsg`` imports this package, which imports ``usb_cfsg/algorithms/<name>.py`` for every
algorithm whose keys :data:`usb_cfsg.algorithm_keys.ALGORITHMS` declares; each module registers its
class. So an algorithm of this package is two files: its module and its keys' entry. A name that
semilearn (or anyone) already registered is an error, not a silent overwrite as in semilearn's own
registry. The lookup itself (:func:`register_algorithm`, :func:`get_algorithm_class`,
:func:`algorithm_names`) lives in :mod:`usb_cfsg.registry`, below the engine, which looks algorithms up
without importing this package.
"""

from __future__ import annotations

import importlib
from typing import Any, List

from ..algorithm_keys import ALGORITHMS, problems
from ..registry import algorithm_names, get_algorithm_class, register_algorithm

#: Our algorithm modules, one per declared algorithm and named after it.
_MODULES: tuple[str, ...] = tuple(ALGORITHMS)


def ssl_arguments(name: str) -> List[Any]:
    """USB's ``get_argument()`` list of our algorithm ``name``, from its keys in ``usb_cfsg.algorithm_keys``.

    Every algorithm of ours returns this from ``get_argument()``, so its keys are declared once.
    """
    from semilearn.algorithms.utils import SSL_Argument, str2bool

    from ..algorithm_keys import one_of

    out = []
    for key in ALGORITHMS[name].keys:
        if key.choices is not None:
            typ: Any = one_of(*key.choices)
        else:
            typ = {"bool": str2bool, "int": int, "float": float, "str": str}[key.type]
        out.append(SSL_Argument(f"--{key.name}", typ, key.default, key.help))
    return out


def declared_problems(name: str, args: Any) -> List[str]:
    """``validate_config`` of our algorithm ``name``: its declared ranges and rules (``usb_cfsg.algorithm_keys``)."""
    return problems(name, args)


__all__ = [
    "algorithm_names",
    "declared_problems",
    "get_algorithm_class",
    "register_algorithm",
    "ssl_arguments",
]

for _module in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_module}":
            raise
        raise ImportError(
            f"algorithm {_module!r} has keys in usb_cfsg/algorithm_keys.py but no module "
            f"usb_cfsg/algorithms/{_module}.py: add the module (registering the class with "
            f"@register_algorithm({_module!r})) or remove the keys' entry"
        ) from None
