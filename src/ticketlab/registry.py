"""A tiny decorator registry: one per kind of thing (models, tasks, pruning methods, ...).

Registries are leaves: the module defining one imports no plug-in. Plug-ins register themselves with
``@REGISTRY.register("name")``; ``ticketlab.plugins`` imports every built-in plug-in once, at the first lookup
of any registry (the package's ``__init__`` installs that loader with :func:`load_plugins_with`), so importing
ticketlab — and commands that only read files — never pays for torch.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ticketlab.errors import ConfigError, did_you_mean

T = TypeVar("T")
_LOADER: dict[str, Any] = {"load": None, "done": False}


def load_plugins_with(loader: Callable[[], None]) -> None:
    """Install the function that registers the built-in plug-ins; it runs once, at the first lookup."""
    _LOADER["load"] = loader


def _ensure_plugins() -> None:
    if _LOADER["done"] or _LOADER["load"] is None:
        return
    _LOADER["done"] = True  # set first: a plug-in that looks a name up while importing does not recurse
    try:
        _LOADER["load"]()
    except BaseException:
        _LOADER["done"] = False  # a failed load (missing package, Ctrl-C) is retried, not left half-filled
        raise


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
        _ensure_plugins()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                              f"known {self.plural}: {', '.join(sorted(self._items))}")
        return self._items[name]

    @property
    def plural(self) -> str:
        return f"{self.kind[:-1]}ies" if self.kind.endswith("y") else f"{self.kind}s"

    def items(self) -> list[tuple[str, T]]:
        _ensure_plugins()
        return sorted(self._items.items())

    def names(self) -> list[str]:
        _ensure_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _ensure_plugins()
        return name in self._items

    def check(self, name: str, options: dict[str, Any], key: str = "options") -> None:
        """Validate ``options`` of ``name`` — names, types and declared ranges — without building anything."""
        check_options(self.get(name), options, f"{self.kind} {name!r}", key)

    def problems(self, name: str, options: dict[str, Any], key: str = "options") -> list[str]:
        """Every problem of ``name`` and its ``options``, as lines (a config check collects them all)."""
        try:
            return option_problems(self.get(name), options, f"{self.kind} {name!r}", key)
        except ConfigError as exc:
            return exc.problems

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the registered factory after :meth:`check` of its keyword arguments."""
        self.check(name, kwargs)
        return self.get(name)(**kwargs)  # type: ignore[operator]


def bounds(**ranges: tuple[float | None, float | None]) -> Callable[[T], T]:
    """Declare inclusive (low, high) ranges of a factory's numeric options (None: unbounded), checked by
    :func:`check_options` before any run folder exists."""
    def decorator(func: T) -> T:
        func.__bounds__ = ranges  # type: ignore[attr-defined]
        return func

    return decorator


def _fits(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool):
        return isinstance(value, tp)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value) if args else \
            isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # an annotation this check does not model


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_options(func: Callable[..., Any], options: dict[str, Any], what: str, key: str = "options") -> None:
    """Raise a ConfigError naming every option ``func`` does not take, every value of the wrong type, and every
    one outside the factory's declared :func:`bounds` (all at once)."""
    problems = option_problems(func, options, what, key)
    if problems:
        raise ConfigError.many(problems)


def option_problems(func: Callable[..., Any], options: dict[str, Any], what: str, key: str = "options") -> list[str]:
    """The problems :func:`check_options` reports, as a list (empty: the options are fine)."""
    problems = kwarg_problems(func, options, what)
    target = getattr(func, "__init__", func) if inspect.isclass(func) else func
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  unresolvable annotations: names are still checked
        hints = {}
    limits = getattr(func, "__bounds__", {})
    problems += nonfinite_problems(options, f"{key}")
    for name, value in options.items():
        if name in hints and not _fits(value, hints[name]):
            problems.append(f"{key}.{name} of {what} must be {_type_name(hints[name])}, got {value!r}")
            continue
        low, high = limits.get(name, (None, None))
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                problems.append(f"{key}.{name} of {what} must be in {span}, got {value!r}")
    return problems


def nonfinite_problems(data: Any, key: str) -> list[str]:
    """Every NaN or infinite number anywhere in ``data`` (YAML's ``.nan`` / ``.inf``, JSON's ``NaN``), by key:
    no setting of a training is meaningful at a non-finite value, so the config check rejects them all."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{key} must be a finite number, got {data!r}; write a real value"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in nonfinite_problems(v, f"{key}.{k}" if key else str(k))]
    if isinstance(data, list | tuple):
        return [p for i, v in enumerate(data) for p in nonfinite_problems(v, f"{key}[{i}]")]
    return []


def check_kwargs(func: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Raise a ConfigError naming every keyword ``func`` does not take."""
    problems = kwarg_problems(func, kwargs, what)
    if problems:
        raise ConfigError.many(problems)


def kwarg_problems(func: Callable[..., Any], kwargs: dict[str, Any], what: str) -> list[str]:
    params = list(inspect.signature(func).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [f"unknown option {key!r} for {what}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed) or '(none)'}"
            for key in kwargs if key not in allowed]


def _origin(obj: Any) -> str:
    target = getattr(obj, "func", obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _same_definition(old: Any, new: Any) -> bool:
    """The same object, or the same definition run again (a notebook cell or a module reload)."""
    if old is new or old == new:
        return True
    return _origin(old) == _origin(new) and "?" not in _origin(old) and "<lambda>" not in _origin(old)
