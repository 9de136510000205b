"""A small name -> object registry with decorators, in the style of timm's model registry, and the
strict lookup of algorithms in semilearn's own ``ALGORITHMS`` registry (USB's and ours)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterator, Type, TypeVar

from .errors import RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; registering a name twice is an error, not a silent overwrite.

    Args:
        kind: What the registry holds, used in error messages ("dataset", "net", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; raises :class:`RegistryError` on a clash."""
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r})")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name lists the known ones and the closest match."""
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)} "
                f"Known {self.kind}s: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


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
