"""Reading, writing and checking run folders (``paths.py`` only names them): a run's θp, its rounds' metrics
against their manifests, the whole run as plain data (``load_run``), every problem of a folder (``verify_run``).
Torch is imported only where θp's tensors are loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketlab.errors import CorruptFileError, TicketlabError
from ticketlab.fileio import MANIFEST, read_json, verify_dir
from ticketlab.paths import CONFIG, FINAL_WEIGHTS, HISTORY, IMP, METRICS, WEIGHTS, RunPaths
from ticketlab.results import read_result
from ticketlab.tensorfiles import check_tensor_file, load_tensors

if TYPE_CHECKING:
    import torch


def write_history(folder: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch train loss / val score / lr / samples/s as ``metrics.jsonl`` (inside an atomic folder)."""
    (folder / HISTORY).write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def load_theta_p(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """θp of a run. A run whose θp comes from a pre-training stores only its own head and references the
    pre-training's backbone file (checked against the sha256 recorded when the run was created)."""
    paths = RunPaths(run_dir)
    tensors, _ = load_tensors(paths.theta_p, verify=False)
    source = check_theta_p(paths.root)
    if source is not None:
        backbone, _ = load_tensors(source, verify=False)
        tensors.update({f"backbone.{name}": value for name, value in backbone.items()})
    return tensors


def check_theta_p(run_dir: str | Path) -> Path | None:
    """Check θp's file (and the pre-trained backbone file it references) against their checksums without
    loading them; returns that backbone file, if any."""
    paths = RunPaths(run_dir)
    meta = check_tensor_file(paths.theta_p)
    reference = meta.get("backbone_from")
    if not reference:
        return None
    source = (paths.root / reference).resolve()
    if not source.is_file():
        raise CorruptFileError(f"θp of {paths.root.name} uses the pre-trained backbone {source}, which is missing; "
                               f"restore it, or delete {paths.theta_p.parent} and re-run 'ticketlab find'")
    if check_tensor_file(source).get("sha256") != meta.get("backbone_sha256"):
        raise CorruptFileError(f"{source} changed since {paths.root.name} was created from it; delete "
                               f"{paths.theta_p.parent} and re-run 'ticketlab find'")
    return source


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run's config, rounds and baselines as plain data (mask paths relative to the run folder)."""
    paths = RunPaths(run_dir)
    if not paths.config.is_file():
        raise TicketlabError(f"{paths.root} is not a ticketlab run folder (no {CONFIG})")

    def rows(branch: str) -> list[dict[str, Any]]:
        out = []
        for k in paths.finished_rounds(branch):
            metrics = check_round(paths.branch(branch, k))
            out.append({"round": metrics["round"], "sparsity": metrics["sparsity"],
                        "mask": str(paths.mask(branch, k).relative_to(paths.root)), "metrics": metrics})
        return out

    return {"run": paths.root.name, "path": str(paths.root), "config": read_json(paths.config),
            "rounds": rows(IMP), "baselines": {name: rows(name) for name in paths.baseline_names()}}


ROUND_KEYS = ("round", "sparsity")


def _is_round_record(metrics: Any) -> bool:
    if not isinstance(metrics, dict) or not all(key in metrics for key in ROUND_KEYS):
        return False
    try:
        return {"test", "val"} <= set(read_result(metrics).scores)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def check_round(folder: Path, hash_weights: bool = False) -> dict[str, Any]:
    """A finished round folder's metrics, after checking it against its manifest and the metrics' shape.

    Weights are hashed only when asked (they are verified against their sidecar whenever they are loaded).
    Folders written before manifests existed (metrics without ``format``) are accepted as they are.
    """
    metrics = read_json(folder / METRICS)
    if not _is_round_record(metrics):
        raise CorruptFileError(f"{folder / METRICS} is not a round's metrics (needs {', '.join(ROUND_KEYS)} and a "
                               f"validation and test score); delete {folder} and re-run 'ticketlab find' on its run")
    if (folder / MANIFEST).is_file() or metrics.get("format", 1) >= 2:
        problems = verify_dir(folder, skip=() if hash_weights else (WEIGHTS, FINAL_WEIGHTS))
        if problems:
            raise CorruptFileError(f"{problems[0]}; delete {folder} and re-run 'ticketlab find' on its run")
    return metrics


def verify_run(run_dir: str | Path) -> list[str]:
    """Every problem of a run folder: θp, each round / baseline / transfer folder (weights hashed too)."""
    paths, problems = RunPaths(run_dir), []
    try:
        read_json(paths.config)
        if paths.theta_p.is_file():
            check_theta_p(paths.root)
    except TicketlabError as exc:
        problems.append(str(exc))
    folders = [f for f in sorted(paths.root.rglob("round_*")) if f.is_dir() and (f / METRICS).is_file()]
    for folder in folders:
        try:
            if folder.parent.parent.name == "transfer":
                problems += verify_dir(folder) if (folder / MANIFEST).is_file() else []
            else:
                check_round(folder, hash_weights=True)
            for tensor in folder.glob("*.safetensors"):
                check_tensor_file(tensor)
        except TicketlabError as exc:
            problems.append(str(exc))
    return problems
