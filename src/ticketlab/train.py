"""The one training loop: epochs over a seeded data order, best-validation selection, callbacks, and
mid-round checkpoints from which a killed training resumes bit-identically (on CPU, fixed thread count).

A checkpoint (every ``engine.checkpoint_every`` steps and at each epoch end) holds the model, the objective's
trainable parts, optimiser, scheduler, grad scaler, every RNG state, the position in the epoch, the best
state so far and the per-epoch history; it is written atomically and deleted by the caller once the
training's result is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.config import EngineConfig, TrainConfig, to_dict
from ticketlab.data.base import Task
from ticketlab.data.loader import device_batches, epoch_loader, on_device
from ticketlab.engine import Engine
from ticketlab.errors import CorruptFileError, TicketlabError
from ticketlab.fileio import storage_error, tmp_path
from ticketlab.masks import Mask
from ticketlab.metrics import chance_score
from ticketlab.objectives.base import Objective
from ticketlab.progress import progress_bar, unit_event
from ticketlab.results import Result
from ticketlab.seeds import derive_seed
from ticketlab.stats import converged
from ticketlab.step import TrainStep


class Callback:
    """Hooks into the loop; subclasses override what they need."""

    def on_step_end(self, step: int, model: nn.Module) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a mid-round checkpoint must keep for this callback."""
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None: ...


class SnapshotAtStep(Callback):
    """Captures the weights after ``step`` optimiser steps (the 'early' rewind point)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if step == self.step:
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.state = saved["state"]


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] = field(repr=False)  # best-validation weights
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (metrics.jsonl)
    final_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # after the last epoch
    objective_state: dict[str, Any] | None = field(default=None, repr=False)  # the objective's parts at the end


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _fingerprint(task: Task, recipe: TrainConfig, seed: int, mask: Mask | None, objective: Objective,
                 engine: Engine) -> str:
    """What a checkpoint must match to be resumed into this training (else: a one-line error)."""
    recipe_fields = {k: v for k, v in to_dict(recipe).items() if v is not None}  # options added later: unset = None
    scored = [] if task.metric == "accuracy" else [task.metric]  # a metric change (vl_disk's paper metrics) is another
    blob = json.dumps([task.name, len(task.train), recipe_fields, seed, mask.digest() if mask else None,  # training
                       objective.name, engine.precision, engine.world_size, engine.cfg.grad_accumulation, *scored],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from exc


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn file from an old crash cannot happen (atomic rename), but a disk can lie
        raise CorruptFileError(f"training checkpoint {path} is unreadable ({type(exc).__name__}); delete it to "
                               "restart this training from its beginning") from exc
    if state.get("fingerprint") != fingerprint:
        raise TicketlabError(f"training checkpoint {path} belongs to a different config (task, recipe, seed, mask or "
                             "engine changed); delete it to restart this training, or restore the config")
    return state


def train_model(
    model: nn.Module,
    task: Task,
    recipe: TrainConfig,
    *,
    seed: int,
    mask: Mask | None = None,
    objective: Objective | None = None,
    callbacks: list[Callback] | None = None,
    deterministic: bool = False,
    progress: str | None = None,
    config_key: str = "train",
    engine: EngineConfig | None = None,
    checkpoint: Path | None = None,
    objective_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task``; return the best-validation weights, their metrics and the epoch history.

    The data order depends only on ``seed``; with ``checkpoint`` the training resumes from its last
    checkpoint and ends exactly as an uninterrupted one would.
    """
    callbacks = callbacks or []
    torch.use_deterministic_algorithms(deterministic)
    torch.manual_seed(seed)
    run = Engine(engine, checkpoint.parent / "tracking" if checkpoint is not None else None)
    run.start_tracking(checkpoint.name.strip(".").removesuffix(".checkpoint.pt") if checkpoint else "train",
                       {"seed": seed, **to_dict(recipe)})
    run.check_batch(recipe.batch_size)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(task.train) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    train_step = TrainStep(model, recipe, total_steps, mask=mask, objective=objective,
                           augment_generator=torch.Generator().manual_seed(derive_seed(seed, "augment")),
                           config_key=config_key,
                           reference_steps=min(10, steps_per_epoch), engine=run, task=task)
    objective = train_step.objective
    if objective_state is not None:  # the objective's pre-trained parts (projector, key encoder, queue), rewound
        objective.load_state_dict(objective_state)
    fingerprint = _fingerprint(task, recipe, seed, mask, objective, run)
    pos = {"epoch": 0, "batch": 0, "running": 0.0, "batches": 0, "order_state": generator.get_state()}
    best: dict[str, Any] = {"val": -1.0, "epoch": -1, "state": None}
    history: list[dict[str, Any]] = []
    saved = _load_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    resumed_at = saved["step"] if saved is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        objective.load_state_dict(saved["objective"])
        train_step.optimizer.load_state_dict(saved["optimizer"])
        train_step.scheduler.load_state_dict(saved["scheduler"])
        train_step.generator.set_state(saved["augment_state"])
        train_step.step, train_step.reference = saved["step"], saved["reference"]
        if saved.get("scaler") is not None and run.accelerator.scaler is not None:
            run.accelerator.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        pos, best, history = saved["position"], saved["best"], saved["history"]
        for callback, state in zip(callbacks, saved["callbacks"], strict=True):
            callback.load_state_dict(state)

    def settle() -> None:
        last = train_step.flush()
        pos["running"] += 0.0 if last is None else last

    def save() -> None:
        if checkpoint is None or not run.is_main:
            return
        _save_checkpoint(checkpoint, {
            "fingerprint": fingerprint, "model": _cpu_state(model), "objective": objective.state_dict(),
            "optimizer": train_step.optimizer.state_dict(), "scheduler": train_step.scheduler.state_dict(),
            "scaler": run.accelerator.scaler.state_dict() if run.accelerator.scaler is not None else None,
            "augment_state": train_step.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "step": train_step.step, "reference": train_step.reference, "position": pos, "best": best,
            "history": history, "callbacks": [c.state_dict() for c in callbacks], "samples": samples})

    started, every = time.perf_counter(), run.cfg.checkpoint_every
    bar = progress_bar(total=total_steps * recipe.batch_size, initial=train_step.step * recipe.batch_size,
                       desc=progress or "train", disable=progress is None or not run.is_main, leave=False,
                       unit="sample", unit_scale=True)
    model.train()
    samples = saved.get("samples", 0) if saved is not None else 0
    held = on_device(task.train, run.device) if run.cfg.data_on_device else None

    def stopping() -> bool:  # a callback (``mask_search.MaskSearch``) found what the round was for
        return any(getattr(c, "stop", False) for c in callbacks)

    for epoch in range(pos["epoch"], recipe.epochs):
        if stopping():
            break
        generator.set_state(pos["order_state"])
        order = torch.randperm(len(task.train), generator=generator)
        epoch_started, first = time.perf_counter(), pos["batch"]  # resumed mid-epoch: skip the trained batches
        if held is not None:
            batches = device_batches(held, order, recipe.batch_size, run.rank, run.world_size, first)
        else:
            batches = epoch_loader(task.train, order, recipe.batch_size, run.rank, run.world_size, first,
                                   run.cfg.workers, run.device.type == "cuda")
        for b, (inputs, labels) in enumerate(batches, start=first):
            start = b * recipe.batch_size
            settled = train_step(inputs, labels)
            pos["running"] += 0.0 if settled is None else settled
            pos["batches"] += 1
            pos["batch"] = b + 1
            size = min(recipe.batch_size, len(order) - start)
            bar.update(size)
            samples += size
            for callback in callbacks:
                callback.on_step_end(train_step.step, model)
            if stopping():
                break
            if every and train_step.step % every == 0 and pos["batch"] * recipe.batch_size < len(order):
                settle()
                save()
        settle()
        loss_value = pos["running"] / max(pos["batches"], 1)
        train_step.check_weights()
        val = objective.evaluate(model, task, "val")
        if val > best["val"]:
            best = {"val": val, "epoch": epoch + 1, "state": _cpu_state(model)}
        seconds = time.perf_counter() - epoch_started
        row = {"epoch": epoch + 1, "train_loss": loss_value, "val_score": val,
               "lr": train_step.optimizer.param_groups[0]["lr"],
               "samples_per_s": (pos["batch"] - first) * recipe.batch_size / max(seconds, 1e-9)}
        history.append(row)
        run.log(row, step=epoch + 1)
        unit_event(f"epoch {epoch + 1}/{recipe.epochs}: train loss {loss_value:.4f}, val {val:.4f} (best "
                   f"{max(val, best['val']):.4f}), {row['samples_per_s']:.0f} samples/s, step {train_step.step}")
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{val:.3f}", best=f"{best['val']:.3f}")
        for callback in callbacks:
            callback.on_epoch_end(epoch + 1, {"epoch": epoch + 1, "train_loss": loss_value, "val_score": val})
        pos = {"epoch": epoch + 1, "batch": 0, "running": 0.0, "batches": 0, "order_state": generator.get_state()}
        save()
    bar.close()
    run.end_tracking()
    assert best["state"] is not None
    final_state = _cpu_state(model)
    model.load_state_dict(best["state"])
    test_score = objective.evaluate(model, task, "test")
    extras = {
        **{f"test_{k}": v for k, v in objective.details.get("test", {}).items() if k != "score"},
        "best_epoch": best["epoch"],
        "final_train_loss": history[-1]["train_loss"],
        "epochs": recipe.epochs,
        "steps": train_step.step,
        "samples_seen": samples,
        "stopped_early": stopping(),
        "seed": seed,
        "objective": objective.name,
        "chance_test": chance_score(task.metric, task.test.y),
        "converged": converged([h["val_score"] for h in history]),  # a reference's usability (studies.verdicts)
        "n_test": len(task.test),
        "device": str(run.device), "precision": run.precision, "world_size": run.world_size,
        "threads": run.threads,
        "resumed_at_step": resumed_at,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    metrics = Result(task.metric, {"val": best["val"], "test": test_score}, extras).record()
    model.to("cpu")
    return TrainResult(metrics, best["state"], history, final_state,
                       {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                        for k, v in objective.state_dict().items()})
