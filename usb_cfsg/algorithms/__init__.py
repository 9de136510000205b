"""Our algorithms, registered with semilearn's ``ALGORITHMS`` registry, and a strict lookup.

``import usb_cfsg`` imports this package, which registers every algorithm module listed in
``_MODULES``. A name that semilearn (or anyone) already registered is an error, not a silent
overwrite as in semilearn's own registry.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, List, Type

from ..algorithm_keys import ALGORITHMS, problems
from ..errors import RegistryError, did_you_mean

_MODULES: tuple[str, ...] = ("cfsg_clip", "openmatch", "iomatch", "clip_zeroshot")


def _semilearn_algorithms():
    import semilearn.algorithms  # noqa: F401 - importing fills ALGORITHMS with USB's algorithms
    from semilearn.core.utils import ALGORITHMS

    return ALGORITHMS


def register_algorithm(name: str) -> Callable[[Type[Any]], Type[Any]]:
    """Class decorator: register an algorithm with semilearn under ``name``.

    Raises:
        RegistryError: ``name`` is already registered by another class.
    """

    def deco(cls: Type[Any]) -> Type[Any]:
        registry = _semilearn_algorithms()
        if name in registry:
            existing = registry[name]
            same = (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
                cls.__module__,
                cls.__qualname__,
            )
            if not same:
                raise RegistryError(
                    f"algorithm {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
                )
        registry._dict[name] = cls
        return cls

    return deco


def algorithm_names() -> list[str]:
    """Every registered algorithm name (USB's and ours), sorted."""
    return sorted(_semilearn_algorithms().keys())


def get_algorithm_class(name: str) -> Type[Any]:
    """The algorithm class registered as ``name``; unknown names list the closest ones."""
    registry = _semilearn_algorithms()
    if name not in registry:
        names = list(registry.keys())
        raise RegistryError(f"unknown algorithm {name!r}{did_you_mean(name, names)} Known: {', '.join(sorted(names))}")
    return registry[name]


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


for _module in _MODULES:
    importlib.import_module(f"{__name__}.{_module}")
