"""A tiny name -> factory registry, in the spirit of timm's ``register_model``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories.

    Example:
        >>> heads = Registry("head")
        >>> @heads.register("linear")
        ... def make_linear(): ...
        >>> heads.get("linear") is make_linear
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` stores the function or class under ``name``."""

        def wrap(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name raises with the nearest registered names."""
        if name not in self._items:
            near = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise KeyError(f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
