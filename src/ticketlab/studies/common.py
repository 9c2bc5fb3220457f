"""What every study pipeline does first: its content-addressed folder and its target tasks (kept out of
``studies.base``, which stays a leaf registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ticketlab.config import ModelConfig, TaskConfig, config_hash, to_dict
from ticketlab.data.base import Task, build_task
from ticketlab.errors import ConfigError
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.models.base import model_input_defaults
from ticketlab.paths import study_dir

REPLICATE_STRIDE = 1000  # a study's unit key = seed + 1000 · θp replicate: replicate 0's keys are the seeds


def units(study: Any) -> list[int]:
    """Every (θp replicate, seed) of a study with ``replicates`` and ``seeds`` as one key, seeds nested."""
    return [seed + REPLICATE_STRIDE * r for r in range(study.replicates) for seed in study.seeds]


def replicate_of(unit: int) -> int:
    return unit // REPLICATE_STRIDE


def replicate_problems(study: Any, released: list[str]) -> list[str]:
    """Replicates need pre-training runs (a released checkpoint is one θp) and seeds below the stride."""
    problems = [] if study.replicates >= 1 else [
        f"replicates must be >= 1 (independent pre-trainings), got {study.replicates}"]
    if study.replicates > 1 and not all(0 <= s < REPLICATE_STRIDE for s in study.seeds):
        problems.append(f"with replicates, seeds must lie in 0..{REPLICATE_STRIDE - 1}, got {study.seeds}")
    if study.replicates > 1 and released:
        problems.append(f"replicates: {study.replicates} needs pre-training runs, but {', '.join(released)} take θp "
                        "from a released checkpoint (one θp); set replicates: 1 or pre-train them")
    return problems


def open_study_dir(runs_dir: str | Path, prefix: str, cfg: Any) -> tuple[Path, Path]:
    """(runs folder, the study's own content-addressed folder holding ``study.json``), both created."""
    runs = ensure_writable_dir(Path(runs_dir))
    out = study_dir(runs, prefix, config_hash(cfg))
    out.mkdir(exist_ok=True)
    write_json(out / "study.json", to_dict(cfg))
    return runs, out


def task_key(task: TaskConfig) -> str:
    """How a study names a task in its tables: the registry name, or for a V+L dataset on disk its family
    (``vl_disk`` with ``family: gqa`` -> ``vl_gqa``), so the seven tasks from disk are seven rows."""
    return f"vl_{task.options.get('family', 'vqa')}" if task.name == "vl_disk" else task.name


def unique_task_keys(tasks: list[TaskConfig], key: str) -> list[str]:
    """The study's task keys (its tables, claims and runs are keyed by them); one key twice is refused."""
    names = [task_key(t) for t in tasks]
    if len(set(names)) < len(names):
        raise ConfigError(f"{key} names a task twice ({', '.join(names)}); the study keys its tables, claims and runs "
                          "by task: give each dataset once")
    return names


def study_tasks(model: ModelConfig, tasks: list[TaskConfig]) -> dict[str, Task]:
    """The study's target tasks, built once with what its model implies (image size, tokenizer)."""
    implied = model_input_defaults(model.name, model.options)
    return {task_key(t): build_task(t.name, t.options, implied) for t in tasks}
