"""A tiny decorator registry: one per kind of thing (models, tasks, pruning methods, ...).

Registries are leaves: the module defining one imports no plug-in. Plug-ins register themselves with
``@REGISTRY.register("name")``; ``ticketlab.plugins`` imports every built-in plug-in once.
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
            old = self._items.get(name)
            if old is not None and not _same_definition(old, obj):
                raise ValueError(f"{self.kind} {name!r} is registered twice, by {_origin(old)} and {_origin(obj)}")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    @property
    def plural(self) -> str:
        return f"{self.kind[:-1]}ies" if self.kind.endswith("y") else f"{self.kind}s"

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

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


def _origin(obj: Any) -> str:
    target = getattr(obj, "func", obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _same_definition(old: Any, new: Any) -> bool:
    """The same object, or the same definition run again (a notebook cell or a module reload)."""
    if old is new or old == new:
        return True
    return _origin(old) == _origin(new) and "?" not in _origin(old) and "<lambda>" not in _origin(old)
