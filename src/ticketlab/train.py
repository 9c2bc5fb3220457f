"""The one training loop: optimiser, LR schedule, mask enforcement, best-validation selection, callbacks.

Masks are enforced at negligible cost with two fused ``_foreach_mul_`` calls per step: gradients
are masked before the optimiser step and weights are re-masked after it, so neither momentum nor
weight decay can regrow a pruned weight (the saved weights hold exact zeros at pruned positions).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ticketlab.config import TrainConfig
from ticketlab.data.base import Task
from ticketlab.errors import DivergenceError, NonFiniteLossError
from ticketlab.masks import Mask
from ticketlab.objectives.base import Objective


class MaskEnforcer:
    """Keeps pruned weights at exactly zero during training."""

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        mask.check_fits(model)
        params = dict(model.named_parameters())
        self.params = [params[n] for n in mask.names()]
        self.masks = [mask.tensors[n].to(params[n].device, params[n].dtype) for n in mask.names()]
        self.apply_weights()

    @torch.no_grad()
    def mask_gradients(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks, strict=True) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def apply_weights(self) -> None:
        torch._foreach_mul_(self.params, self.masks)


class Callback:
    """Hooks into the loop; subclasses override what they need."""

    def on_step_end(self, step: int, model: nn.Module) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


class SnapshotAtStep(Callback):
    """Captures the weights after ``step`` optimiser steps (the 'early' rewind point)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if step == self.step:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] = field(repr=False)


def lr_factor(step: int, total: int, recipe: TrainConfig) -> float:
    """Warm-up then the chosen decay, as a multiplier of the base learning rate."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(total - recipe.warmup_steps, 1)
    if recipe.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.lr_schedule == "linear":
        return 1.0 - progress
    if recipe.lr_schedule == "step":
        return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    return 1.0


def build_optimizer(model: nn.Module, recipe: TrainConfig, extra: nn.Module | None = None) -> torch.optim.Optimizer:
    """Backbone (+ the objective's trainable parts) at ``lr``; the head at ``lr * head_lr_mult``."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    if extra is not None:
        body += [p for p in extra.parameters() if p.requires_grad]
    groups = [{"params": body, "lr": recipe.lr}, {"params": head, "lr": recipe.lr * recipe.head_lr_mult}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


class TrainStep:
    """One optimiser step of ticketlab's loop: objective loss, finite check, gradient masking, clipping, step,
    LR schedule, weight re-masking and the objective's ``after_step`` (e.g. MoCo's momentum update).

    ``train_model`` calls it for every batch; ``benchmarks/mask_overhead.py`` times exactly this object.
    """

    def __init__(self, model: nn.Module, recipe: TrainConfig, total_steps: int, *, mask: Mask | None = None,
                 objective: Objective | None = None, augment_generator: torch.Generator | None = None,
                 config_key: str = "train", reference_steps: int = 10) -> None:
        self.model, self.recipe, self.config_key = model, recipe, config_key
        self.reference_steps, self.reference = reference_steps, []
        self.objective = objective or Objective()
        self.enforcer = MaskEnforcer(model, mask) if mask is not None else None
        self.objective.setup(model, mask)
        self.optimizer = build_optimizer(model, recipe, self.objective)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total_steps, recipe))
        self.generator = augment_generator or torch.Generator().manual_seed(0)
        self.step = 0

    def __call__(self, inputs: Any, labels: torch.Tensor) -> float:
        loss = self.objective.loss(self.model, inputs, labels, self.generator)
        value = loss.item()
        self.check_loss(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.enforcer:
            self.enforcer.mask_gradients()
        if self.recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.enforcer:
            self.enforcer.apply_weights()
        self.objective.after_step(self.model)
        self.step += 1
        return value

    def check_loss(self, value: float) -> None:
        """Stop on a non-finite loss, or one above ``divergence_factor`` × the first-epoch loss (the lowest of the
        first steps' losses, so a run that explodes within its first steps still has an honest reference)."""
        key = self.config_key
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the loss became {value} at step {self.step + 1}; lower {key}.lr or set "
                                     f"{key}.grad_clip (finished rounds are kept)")
        if len(self.reference) < self.reference_steps:
            self.reference.append(value)
            return
        reference = min(self.reference)
        factor = self.recipe.divergence_factor
        if factor > 0 and value > factor * max(reference, 0.1):
            raise DivergenceError(f"training diverged: the loss reached {value:.3g} at step {self.step + 1}, over "
                                  f"{factor:g}× its first-epoch value {reference:.3g}; lower {key}.lr or set "
                                  f"{key}.grad_clip (or raise {key}.divergence_factor); finished rounds are kept")

    def check_weights(self) -> None:
        """Stop when a weight or a BatchNorm statistic is no longer finite."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise DivergenceError(f"training diverged: {name} holds NaN or infinite values after step {self.step}; "
                                      f"lower {self.config_key}.lr or set {self.config_key}.grad_clip; finished "
                                      "rounds are kept")


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
) -> TrainResult:
    """Train ``model`` on ``task``; return the best-validation weights and their metrics.

    The data order depends only on ``seed``, so re-running a round reproduces it exactly.
    """
    callbacks = callbacks or []
    torch.use_deterministic_algorithms(deterministic)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(task.train) / recipe.batch_size)
    train_step = TrainStep(model, recipe, steps_per_epoch * recipe.epochs, mask=mask, objective=objective,
                           augment_generator=torch.Generator().manual_seed(seed + 1), config_key=config_key,
                           reference_steps=min(10, steps_per_epoch))
    objective = train_step.objective
    best_val, best_epoch, best_state, loss_value = -1.0, -1, None, float("nan")
    started = time.perf_counter()
    bar = tqdm(range(recipe.epochs), desc=progress or "train", disable=progress is None, leave=False,
               unit="epoch", dynamic_ncols=True)
    model.train()
    for epoch in bar:
        order = torch.randperm(len(task.train), generator=generator)
        running, batches = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            running += train_step(task.train.inputs(idx), task.train.y[idx])
            batches += 1
            for callback in callbacks:
                callback.on_step_end(train_step.step, model)
        loss_value = running / max(batches, 1)
        train_step.check_weights()
        val = objective.evaluate(model, task, "val")
        if val > best_val:
            best_val, best_epoch = val, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        epoch_metrics = {"epoch": epoch + 1, "train_loss": loss_value, "val_acc": val}
        bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{val:.3f}", best=f"{best_val:.3f}")
        for callback in callbacks:
            callback.on_epoch_end(epoch + 1, epoch_metrics)
    bar.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    test_score = objective.evaluate(model, task, "test")
    metrics = {
        "val_acc": best_val,
        "test_acc": test_score,
        **{f"test_{k}": v for k, v in objective.details.get("test", {}).items() if k != "score"},
        "best_epoch": best_epoch,
        "final_train_loss": loss_value,
        "epochs": recipe.epochs,
        "steps": train_step.step,
        "seed": seed,
        "objective": objective.name,
        "chance_test": task.test.majority_rate() if task.metric == "accuracy" else None,
        "n_test": len(task.test),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return TrainResult(metrics, best_state)
