"""Typed dataclasses from YAML mappings, every problem of a config reported at once.

Generic (it knows no ticketlab config): ``config.py`` and the studies' configs parse with it. Unknown keys get
the closest valid names; wrong types, non-finite numbers and values a dataclass's ``__post_init__`` rejects are
collected, so a config with several mistakes is fixed in one run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ticketlab.errors import ConfigError, did_you_mean, one_line
from ticketlab.registry import nonfinite_problems

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000


class _Invalid(Exception):
    """A value whose problems are already recorded: its key is left out and parsing goes on."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"bad value {value!r} for {key}{did_you_mean(value, map(str, args))}; "
                            f"allowed: {', '.join(map(str, args))}")
            raise _Invalid
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key} must be a mapping of options, got {value!r}")
            raise _Invalid
        return _build(tp, value, key, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key} must be a list, got {value!r}")
            raise _Invalid
        items, before = [], len(problems)
        for i, v in enumerate(value):
            try:
                items.append(_coerce(v, args[0], f"{key}[{i}]", problems))
            except _Invalid:
                pass
        if len(problems) > before:
            raise _Invalid
        return items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{key} must be a mapping, got {value!r}")
            raise _Invalid
        return dict(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {value!r}; write a real value")
            raise _Invalid
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is Any:
        return value
    problems.append(f"{key} must be {_type_name(tp)}, got {value!r}")
    raise _Invalid


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    """``cls`` from ``data``, recording problems and carrying on: a bad value is left at its default, so the
    checks that follow (registry names, ranges) still run and report their own problems in the same go."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            problems.append(f"unknown config key {full!r}{did_you_mean(key, names)}; allowed keys here: "
                            f"{', '.join(names)}")
            continue
        try:
            kwargs[key] = _coerce(value, hints[key], full, problems)
        except _Invalid:
            continue
        if hints[key] is Any or typing.get_origin(hints[key]) is dict or hints[key] is dict:
            problems += nonfinite_problems(value, full)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # the dataclass's own range checks
        problems += exc.problems
    except TypeError as exc:  # a required field is missing
        problems.append(f"{prefix or 'the config'}: {exc}")
        raise _Invalid from None
    try:
        return cls()
    except (ConfigError, TypeError):
        raise _Invalid from None


def parse_lenient(cls: type, data: dict[str, Any], prefix: str = "") -> tuple[Any, list[str]]:
    """(``cls`` built with every bad value at its default or None, every problem found): for checks that go on
    after the structure to report everything at once."""
    problems: list[str] = []
    try:
        return _build(cls, data, prefix, problems), problems
    except _Invalid:
        return None, problems


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; a ConfigError lists every unknown key (with the closest valid
    names), wrong type and rejected value at once."""
    obj, problems = parse_lenient(cls, data, prefix)
    if problems:
        raise ConfigError.many(problems)
    return obj


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {one_line(exc)}") from exc
    if data is None or data == {}:
        raise ConfigError(f"{path} is empty; give at least the model, task and train sections (see examples/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of config keys, got {type(data).__name__}")
    if _expanded_size(data, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path} expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases/anchors repeated "
                          "in a chain?); write the values out or remove the aliases")
    return data


def _expanded_size(data: Any, budget: int) -> int:
    """Values in ``data`` with every alias expanded, counted only up to ``budget`` (an alias bomb stops early)."""
    count, stack = 0, [data]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count
