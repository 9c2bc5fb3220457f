"""A tiny decorator registry: one per kind of thing (models, tasks, pruning methods, ...).

Adding a new model/task/method is a new file plus one ``@REGISTRY.register("name")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ticketlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the registered factory, rejecting keyword arguments it does not accept by name."""
        factory = self.get(name)
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)  # type: ignore[operator]


def check_kwargs(func: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Raise a ConfigError naming any keyword ``func`` does not take."""
    params = list(inspect.signature(func).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} for {what}; allowed: {', '.join(allowed) or '(none)'}")
