"""Transfer a ticket: apply a run's mask to its θp, add a fresh head for the target task, fine-tune.

Results live under the source run (``transfer/<target>-<hash>/seed_<s>/round_<k>/metrics.json``),
written atomically and never recomputed, like IMP rounds. Round 0 (the all-ones mask) is the dense
reference: θp fine-tuned on the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketlab.config import TaskConfig, TrainConfig, config_hash, parse_config, to_dict
from ticketlab.data import Task, build_task
from ticketlab.errors import TicketlabError
from ticketlab.experiment import round_name
from ticketlab.fileio import atomic_dir, load_tensors, read_json, write_json
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.objectives import OBJECTIVES
from ticketlab.train import train_model


@dataclass(frozen=True)
class TransferSpec:
    """What a transfer result depends on besides the source run (hashed into its folder name)."""

    target: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    variant: str = "ticket"  # or a mask perturbation: complement, random, delta10
    objective: str = "supervised"  # the fine-tuning loss, e.g. villa (adversarial)
    objective_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransferResult:
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] | None = None  # only when trained in this call


def parse_mask_ref(ref: str) -> tuple[Path, int | None]:
    """``RUN`` or ``RUN:round`` -> (run folder, round or None for every round)."""
    path, _, k = ref.rpartition(":") if ":" in ref else (ref, "", "")
    run = Path(path)
    if not (run / "config.json").is_file():
        raise TicketlabError(f"{run} is not a ticketlab run folder; give --mask RUN_FOLDER[:ROUND]")
    if k and not k.isdigit():
        raise TicketlabError(f"bad round {k!r} in {ref!r}; use RUN_FOLDER:3")
    return run, int(k) if k else None


def available_rounds(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "rounds").glob("round_*")
                  if (p / "metrics.json").is_file())


def theta_p_backbone(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_tensors(run_dir / "init" / "theta_p.safetensors")
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def transfer_ticket(run_dir: Path, k: int, spec: TransferSpec, task: Task | None = None,
                    mask: Mask | None = None, progress: bool = False) -> TransferResult:
    """Fine-tune round ``k``'s ticket (or the given ``mask``) from the run's θp on ``spec.target``."""
    run_dir = Path(run_dir)
    folder = run_dir / "transfer" / f"{spec.target.name}-{config_hash(spec)}" / round_name(k)
    if (folder / "metrics.json").is_file():
        return TransferResult(read_json(folder / "metrics.json"))
    if k not in available_rounds(run_dir):
        raise TicketlabError(f"{run_dir.name} has no finished round {k}; finished: {available_rounds(run_dir)}")
    source = parse_config(read_json(run_dir / "config.json"))
    task = task or build_task(spec.target.name, spec.target.options)
    model = build_model(source.model.name, task.num_classes, source.model.options, seed=spec.seed,
                        head=task.head)
    model.load_state_dict(theta_p_backbone(run_dir), strict=False)
    model.reset_head(task.num_classes, spec.seed)
    ticket = Mask.load(run_dir / "rounds" / round_name(k) / "mask.safetensors")
    mask = mask or ticket
    objective = OBJECTIVES.build(spec.objective, **spec.objective_options)
    result = train_model(model, task, spec.train, seed=spec.seed, mask=mask, objective=objective,
                         progress=f"transfer {run_dir.name}:{k} -> {task.name}" if progress else None)
    metrics = {"source": run_dir.name, "round": k, "target": spec.target.name, "variant": spec.variant,
               "sparsity": mask.sparsity(), "source_sparsity": ticket.sparsity(), "num_classes": task.num_classes,
               "spec": to_dict(spec), **result.metrics}
    with atomic_dir(folder) as tmp:
        write_json(tmp / "metrics.json", metrics)
    return TransferResult(metrics, result.state)
