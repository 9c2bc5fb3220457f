"""Patch-ticket selection (MISSION.md section 3): a ViT selector fine-tuned with EViT token reduction, whose
surviving patches are each image's ticket — written once to ``runs/select-<hash>/`` and read by every student.
Cross-fitted by default: two selectors, each fine-tuned on one half of the training images, pick the tickets of
the other half, so no training ticket comes from a selector that saw that image's label."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ticketlab.config import EngineConfig, ModelConfig, TaskConfig, TrainConfig, config_hash, to_dict
from ticketlab.data.base import Split, Task, build_task, subset
from ticketlab.fileio import ensure_writable_dir, write_json
from ticketlab.models.base import build_model, model_input_defaults
from ticketlab.patches.tickets import find_tickets, save_tickets, ticket_grid_png
from ticketlab.patches.vit import patch_vit
from ticketlab.paths import CONFIG, TICKETS, select_dir
from ticketlab.tensorfiles import save_tensors
from ticketlab.train import Callback, train_model
from ticketlab.units import run_unit


@dataclass(frozen=True)
class SelectorConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="vit"))
    task: TaskConfig = field(default_factory=TaskConfig)
    keep_rate: float = 0.7
    reduction_layers: list[int] = field(default_factory=list)  # 0-based; empty = blocks 4, 7, 10 of 12, scaled
    finetune: TrainConfig | None = None  # fine-tune with token reduction first; None = use the model as is
    seed: int = 0
    keep_warmup_steps: int = 0  # keep rate goes linearly from 1 to keep_rate over these steps (EViT's warm-up)
    cross_fit: bool = True  # training-image tickets come from a selector fine-tuned on the other half
    engine: EngineConfig = field(default_factory=EngineConfig)


def selector_model(cfg: SelectorConfig, num_classes: int) -> Any:
    model = build_model(cfg.model.name, num_classes, cfg.model.options, seed=cfg.seed, normalize=cfg.model.normalize)
    patch_vit(model.backbone).set_token_reduction(cfg.keep_rate, tuple(cfg.reduction_layers) or None)
    return model


class KeepRateWarmup(Callback):
    """EViT's warm-up: the selector's keep rate falls linearly from 1 to its target over the first steps."""

    def __init__(self, backbone: Any, target: float, steps: int) -> None:
        self.backbone, self.target, self.steps = backbone, target, steps
        backbone.keep_rate = 1.0 if steps > 0 else target

    def on_step_end(self, step: int, model: Any) -> None:
        self.backbone.keep_rate = 1.0 - (1.0 - self.target) * min(1.0, step / max(self.steps, 1))


def fine_tune_selector(cfg: SelectorConfig, task: Task, folder: Path, label: str,
                       progress: bool) -> tuple[Any, dict[str, Any]]:
    model = selector_model(cfg, task.num_classes)
    if cfg.finetune is None:
        return model, {}
    warmup = KeepRateWarmup(model.backbone, cfg.keep_rate, cfg.keep_warmup_steps)
    result = train_model(model, task, cfg.finetune, seed=cfg.seed, callbacks=[warmup],
                         progress=f"selector {label} k={cfg.keep_rate}" if progress else None, engine=cfg.engine,
                         checkpoint=folder.parent / f".{folder.name}.{label}.checkpoint.pt")
    model.backbone.keep_rate = cfg.keep_rate
    return model, result.metrics


def cross_fitted_tickets(cfg: SelectorConfig, task: Task, folder: Path,
                         progress: bool) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    """Tickets of the training images from the selector fine-tuned on the *other* half; val/test tickets from the
    first selector (neither saw them). Without ``cross_fit``, one selector on all training images."""
    if not cfg.cross_fit or cfg.finetune is None:
        model, metrics = fine_tune_selector(cfg, task, folder, "all", progress)
        return model, find_tickets(model, task), metrics
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(cfg.seed))
    halves = [torch.sort(order[: len(order) // 2]).values, torch.sort(order[len(order) // 2 :]).values]
    models, metrics = [], {}
    for i, rows in enumerate(halves):
        half = dataclasses.replace(task, train=Split(subset(task.train.x, rows), task.train.y[rows]))
        model, m = fine_tune_selector(cfg, half, folder, f"half{i}", progress)
        models.append(model)
        metrics[f"half{i}"] = m
    tickets = find_tickets(models[0], task)
    other = find_tickets(models[1], task, splits=("train",))["train"]
    train_tickets = tickets["train"].clone()
    train_tickets[halves[0]] = other[halves[0]]  # half 0's images: picked by the selector trained on half 1
    tickets["train"] = train_tickets
    return models[0], tickets, {**metrics["half0"], "halves": metrics}


def run_selection(cfg: SelectorConfig, runs_dir: Path, progress: bool = True) -> Path:
    """Fine-tune the selector(s) with token reduction (if asked), then write every image's patch ticket."""
    folder = select_dir(ensure_writable_dir(Path(runs_dir)), config_hash(cfg))
    if (folder / TICKETS).is_file():
        return folder / TICKETS
    task = build_task(cfg.task.name, cfg.task.options, model_input_defaults(cfg.model.name, cfg.model.options))

    def train(checkpoint: Path) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
        return cross_fitted_tickets(cfg, task, folder, progress)  # one checkpoint per selector, beside the folder

    def write(tmp: Path, payload: tuple[Any, dict[str, torch.Tensor], dict[str, Any]]) -> None:
        model, tickets, metrics = payload
        vit = model.backbone.model
        grid = vit.config.image_size // vit.config.patch_size
        write_json(tmp / CONFIG, to_dict(cfg))
        save_tensors(tmp / "selector.safetensors", model.state_dict(), {"metrics": metrics})
        save_tickets(tmp / TICKETS, tickets, task, cfg.keep_rate, grid * grid, grid,
                     {"model": to_dict(cfg.model), "config_hash": config_hash(cfg), "metrics": metrics,
                      "reduction_layers": list(model.backbone.reduction_layers)})
        ticket_grid_png(task.test.x[:16], tickets["test"][:16], grid, tmp / "tickets.png")

    if run_unit(folder, TICKETS, train, write, f"selector {folder.name}") is not None:
        for stale in folder.parent.glob(f".{folder.name}.*.checkpoint.pt"):  # the selectors' own checkpoints
            stale.unlink(missing_ok=True)
    return folder / TICKETS
