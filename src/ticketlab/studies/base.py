"""The study protocol and the ``STUDIES`` registry (a leaf: it imports no study).

A study is a config dataclass, ``check(cfg)`` — everything a long run would trip over later, called
both when the config is loaded and when the study runs — and ``run(cfg, runs_dir, progress)``, which
returns the study's folder holding ``report.md``. Adding one is a new module under ``studies/`` that
ends with ``STUDIES.register("name")(Study(...))``, plus its import line in ``ticketlab.plugins``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.config import from_dict, read_yaml
from ticketlab.registry import Registry


@dataclass(frozen=True)
class Study:
    config_cls: type
    check: Callable[[Any], None]
    run: Callable[[Any, Path, bool], Path]
    description: str = ""


STUDIES: Registry[Study] = Registry("study")


def load_study(name: str, path: str | Path) -> Any:
    """Parse and check study ``name``'s config file (before any work starts)."""
    return study_config(name, read_yaml(path))


def study_config(name: str, data: dict[str, Any]) -> Any:
    """Parse and check study ``name``'s config from its YAML data."""
    study = STUDIES.get(name)
    cfg = from_dict(study.config_cls, data)
    study.check(cfg)
    return cfg


def run_study(name: str, cfg: Any, runs_dir: str | Path = "runs", progress: bool = True) -> Path:
    """Check and run (or resume) study ``name``; return its folder (with ``report.md``)."""
    study = STUDIES.get(name)
    study.check(cfg)
    return study.run(cfg, Path(runs_dir), progress)

