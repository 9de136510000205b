"""A small name -> object registry with decorators, in the style of timm's model registry."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

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
