"""The study protocol and the ``STUDIES`` registry (a leaf: it imports no study).

A study is a config dataclass, ``check(cfg)`` — everything a long run would trip over later, called
both when the config is loaded and when the study runs — and ``run(cfg, runs_dir, progress)``, which
returns the study's folder holding ``report.md``. Optionally ``jobs(cfg, runs_dir)``: the study's trainings as a
graph of jobs (``ticketlab.jobs``), run first on the chosen executor (in parallel on Ray), after which ``run``
finds every result finished and only assembles the report. Adding one is a new module under ``studies/`` that
ends with ``STUDIES.register("name")(Study(...))``, plus its import line in ``ticketlab.plugins``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketlab.config import from_dict, read_yaml
from ticketlab.errors import ConfigError
from ticketlab.jobs import Job
from ticketlab.registry import Registry


@dataclass(frozen=True)
class Study:
    config_cls: type
    check: Callable[[Any], None]
    run: Callable[[Any, Path, bool], Path]
    description: str = ""
    jobs: Callable[[Any, Path], list[Job]] | None = None


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


def run_study(name: str, cfg: Any, runs_dir: str | Path = "runs", progress: bool = True, executor: str = "local",
              address: str | None = None) -> Path:
    """Check and run (or resume) study ``name``; return its folder (with ``report.md``). A study with a job graph
    runs it on ``executor`` first; a failed job stops the study before its report, naming every failure."""
    from ticketlab.executors import run_graph
    from ticketlab.report import folders_compute

    study = STUDIES.get(name)
    study.check(cfg)
    jobs = study.jobs(cfg, Path(runs_dir)) if study.jobs is not None else []
    if study.jobs is not None:
        run_graph(jobs, Path(runs_dir), executor, progress, address).raise_if_unfinished("study trainings")
    elif executor != "local":
        raise ConfigError(f"study {name} has no job graph yet: it runs with --executor local only")
    out = study.run(cfg, Path(runs_dir), progress)
    folders = sorted({Path(runs_dir) / job.id.split(":")[0].split("/")[0] for job in jobs})  # each a unit's own
    report = out / "report.md"
    if folders and report.is_file():
        text = report.read_text(encoding="utf-8").rstrip()
        report.write_text(text + "\n\n" + folders_compute(folders) + "\n", encoding="utf-8")
    return out

