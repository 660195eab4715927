"""A small named registry, as mergekit keeps its methods: unknown names list the known ones."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


def describe(obj: Any) -> str:
    """Where ``obj`` comes from, for an error message: ``module.qualname`` of a function or class, else its repr."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if name and module else repr(obj)


class Registry(Generic[T]):
    """Maps names to objects; ``get`` of an unknown name lists the known names; a second registration
    under a name is an error naming both."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error naming both objects."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise HarnessError(f"{self.kind} {name!r} is registered twice: first {describe(self._items[name])}, "
                                   f"then {describe(obj)}")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` without a decorator."""
        self.register(name)(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise naming the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise HarnessError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def _state(self) -> Any:
        """A copy of what :meth:`isolated` restores (subclasses with more tables extend it)."""
        return dict(self._items)

    def _restore(self, state: Any) -> None:
        self._items = state

    @contextlib.contextmanager
    def isolated(self) -> Iterator["Registry[T]"]:
        """Within the block, registrations go to a copy; on leaving, the registry is as it was (tests)."""
        saved = self._state()
        try:
            yield self
        finally:
            self._restore(saved)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
