"""``ticketlab sweep``: the product of swept config values (× seeds) as content-addressed IMP runs — a graph of
IMP runs' jobs (``run_jobs.py``) for any executor — and its summary table (Markdown and CSV). Re-running a
sweep, or widening it, computes only the runs that are new.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ticketlab.analysis import highest_sparsity
from ticketlab.config import ExperimentConfig, config_hash, parse_config
from ticketlab.errors import ConfigError, did_you_mean, one_line
from ticketlab.experiment import run_dir_for
from ticketlab.figures import markdown_table
from ticketlab.fileio import ensure_writable_dir, read_json, write_json, write_text
from ticketlab.jobs import Job
from ticketlab.results import score
from ticketlab.run_jobs import experiment_jobs, merge_jobs
from ticketlab.runfolders import load_run
from ticketlab.store import folder_status


def parse_seeds(text: str | None) -> list[int] | None:
    """``0-4`` or ``0,1,2`` -> seeds; None when not given."""
    if not text:
        return None
    try:
        if "-" in text.strip("-"):
            low, high = (int(x) for x in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds must look like 0-4 (low to high) or 0,1,2, got {text!r}")
    return seeds


def parse_sets(items: list[str]) -> dict[str, list[Any]]:
    """``key=v1,v2`` (a dotted config key; values read as YAML) -> {key: [v1, v2]}, each key checked."""
    sets: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--set {item!r} must look like key=v1,v2 (e.g. train.lr=0.1,0.05)")
        check_key(key)
        try:
            sets[key] = [yaml.safe_load(v) for v in _split_top_level(values)]
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: a value is not valid YAML ({one_line(exc)[:120]}); "
                              "write lists as [a, b] and mappings as {k: v}") from None
    return sets


def _split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets and braces: ``[0.9,0.99],[0.8,0.9]`` is two values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def check_key(key: str) -> None:
    """A dotted key must name a config field (any key below an ``options`` mapping is the plug-in's to check)."""
    cls: Any = ExperimentConfig
    for i, part in enumerate(key.split(".")):
        if not dataclasses.is_dataclass(cls):
            return  # inside a mapping (options): checked by the plug-in when the config is parsed
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(key.split(".")[:i]) or "the config"
            raise ConfigError(f"--set {key}: unknown key {part!r} in {where}{did_you_mean(part, names)}; valid keys "
                              f"there: {', '.join(names)}")
        hint = typing.get_type_hints(cls)[part]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # e.g. ``PretrainConfig | None``
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        cls = hint


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a mapping in the base config")
    node[last] = value


def sweep_points(base: dict[str, Any], sets: dict[str, list[Any]], seeds: list[int] | None
                 ) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """(swept values, parsed config) for every point of the product; every problem of every point at once."""
    axes = dict(sets, **({"seed": seeds} if seeds is not None else {}))
    points, problems = [], []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = dict(zip(axes, combo, strict=True))
        data = copy.deepcopy(base)
        for key, value in values.items():
            _assign(data, key, value)
        try:
            points.append((values, parse_config(data)))
        except ConfigError as exc:
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            problems += [f"{label}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError.many(problems)
    return points


def sweep_id(base: dict[str, Any], sets: dict[str, list[Any]], seeds: list[int] | None) -> str:
    blob = json.dumps({"base": base, "sets": sets, "seeds": seeds}, sort_keys=True, default=str)
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def sweep_jobs(points: list[tuple[dict[str, Any], ExperimentConfig]], runs_dir: Path) -> list[Job]:
    return merge_jobs([experiment_jobs(cfg, runs_dir, ", ".join(f"{k}={v}" for k, v in values.items()))
                       for values, cfg in points])


def write_sweep(runs_dir: Path, sid: str, base: dict[str, Any], sets: dict[str, list[Any]],
                seeds: list[int] | None, points: list[tuple[dict[str, Any], ExperimentConfig]]) -> Path:
    folder = ensure_writable_dir(Path(runs_dir) / sid)
    runs = [{"values": values, "run_id": run_dir_for(cfg, runs_dir).name, "config_hash": config_hash(cfg)}
            for values, cfg in points]
    write_json(folder / "sweep.json", {"base": base, "sets": sets, "seeds": seeds, "runs": runs})
    return folder


def sweep_summary(folder: Path) -> tuple[list[str], list[list[str]]]:
    """One row per run: the swept values, status, best matching sparsity and the IMP test score per sparsity."""
    sweep = read_json(Path(folder) / "sweep.json")
    runs_dir = Path(folder).parent
    keys = list(sweep["sets"]) + (["seed"] if sweep["seeds"] is not None else [])
    rows, sparsities = [], {}
    for entry in sweep["runs"]:
        run_dir = runs_dir / entry["run_id"]
        status = folder_status(run_dir)[0] if run_dir.is_dir() else "queued"
        rounds = load_run(run_dir)["rounds"] if (run_dir / "config.json").is_file() else []
        for r in rounds:
            sparsities.setdefault(round(r["sparsity"], 4), None)
        rows.append((entry, status, rounds))
    columns = sorted(sparsities)
    head = [*keys, "run", "status", "best matching sparsity", *[f"test @ {s:.1%}" for s in columns]]
    table = []
    for entry, status, rounds in rows:
        by_sparsity = {round(r["sparsity"], 4): score(r["metrics"]) for r in rounds}
        matching = "—"
        if rounds and rounds[0]["round"] == 0:
            dense_val = score(rounds[0]["metrics"], "val")
            curve = [(r["sparsity"], score(r["metrics"], "val")) for r in rounds if r["round"] > 0]
            best = highest_sparsity(curve, dense_val)
            matching = "none" if best is None else f"{best:.2%}"
        table.append([*(str(entry["values"].get(k)) for k in keys), entry["run_id"], status, matching,
                      *(f"{by_sparsity[s]:.4f}" if s in by_sparsity else "" for s in columns)])
    return head, table


def write_summary(folder: Path) -> tuple[Path, Path]:
    head, rows = sweep_summary(folder)
    markdown, table = Path(folder) / "summary.md", Path(folder) / "summary.csv"
    write_text(markdown, f"# {Path(folder).name}\n\n{markdown_table(head, rows)}\n\nbest matching sparsity: the "
               "highest sparsity up to which every IMP round's validation score ≥ dense (one seed per row)\n")
    buffer = io.StringIO()
    csv.writer(buffer).writerows([head, *rows])
    write_text(table, buffer.getvalue())
    return markdown, table
