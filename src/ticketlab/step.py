"""One optimiser step of ticketlab's loop, with masks enforced at negligible cost.

Two fused ``_foreach_mul_`` calls per step keep pruned weights at zero: gradients are masked (after
unscaling under fp16, after averaging across ranks) before the optimiser step and weights are re-masked
after it, so neither momentum nor weight decay can regrow a pruned weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ticketlab.augment import SUPERVISED_AUGMENTATIONS
from ticketlab.config import TrainConfig
from ticketlab.data.base import Task, slice_inputs
from ticketlab.deit_recipe import batch_recipe, check_fixed_positions
from ticketlab.engine import Engine
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
    if recipe.head_lr_mult == 1.0:  # one group: one fused (foreach) update per step instead of two
        groups = [{"params": body + head, "lr": recipe.lr}]
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
                 config_key: str = "train", reference_steps: int = 10, engine: Engine | None = None,
                 task: Task | None = None) -> None:
        self.model, self.recipe, self.config_key = model, recipe, config_key
        self.engine = engine
        self.reference_steps, self.reference = reference_steps, []
        self.objective = objective or Objective()
        check_fixed_positions(recipe, self.objective, task, config_key)  # before the patch adapter is fitted
        self.forward_model = engine.prepare_model(model, wrap=self.objective.model_only) if engine else model
        self.enforcer = MaskEnforcer(model, mask) if mask is not None else None
        self.objective.setup(model, mask)
        self.objective.to(next(model.parameters()).device)
        self.optimizer = build_optimizer(model, recipe, self.objective)
        if engine is not None:
            self.optimizer = engine.accelerator.prepare_optimizer(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total_steps, recipe))
        self.generator = augment_generator or torch.Generator().manual_seed(0)
        self.augment = SUPERVISED_AUGMENTATIONS[recipe.augment]
        self.batch_recipe = batch_recipe(recipe, model, self.objective, task, config_key)  # DeiT's; None when off
        self.accumulation = engine.cfg.grad_accumulation if engine else 1
        self.pending: tuple[torch.Tensor, Any] | None = None  # this step's loss, checked at the next step
        self.step = 0

    def __call__(self, inputs: Any, labels: torch.Tensor) -> float:
        """One optimiser step on this rank's batch (split into ``grad_accumulation`` micro-batches). Returns the
        *previous* step's loss once checked (None on the first call); :meth:`flush` gives the last one."""
        if self.engine is not None:
            inputs, labels = self.engine.to_device(inputs), self.engine.to_device(labels)
        if self.augment is not None and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = self.augment(inputs, self.generator)
        if self.batch_recipe is not None and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs, labels = self.batch_recipe(inputs, labels, self.generator)  # soft targets: cross-entropy takes them
        elif self.batch_recipe is not None and isinstance(inputs, tuple):  # (images, ticket patches): pixels stay put
            images, labels = self.batch_recipe(inputs[0], labels, self.generator)
            inputs = (images, *inputs[1:])
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self._backward(chunk, micro) for chunk, micro in self._micro_batches(inputs, labels)]
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        previous, self.pending = self.pending, self._to_host(loss)
        settled = self._settle(previous)  # the previous step's loss, long copied: no GPU sync in this step
        if self.engine is not None:
            if not self.objective.model_only:
                self.engine.all_reduce_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
            self.engine.accelerator.unscale_gradients()
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
        return settled

    def _to_host(self, loss: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start copying a loss to the host without waiting (CUDA: one of two reused pinned buffers + an event)."""
        if not loss.is_cuda:
            return loss, None
        if not hasattr(self, "_host"):
            self._host = [torch.empty((), dtype=torch.float32, pin_memory=True) for _ in range(2)]
            self._events = [torch.cuda.Event() for _ in range(2)]
        self._slot = 1 - getattr(self, "_slot", 1)
        host, event = self._host[self._slot], self._events[self._slot]
        host.copy_(loss, non_blocking=True)
        event.record()
        return host, event

    def flush(self) -> float | None:
        """Check and return the loss of the last step (at an epoch end or before a checkpoint)."""
        value, self.pending = self._settle(self.pending), None
        return value

    def _settle(self, pending: tuple[torch.Tensor, Any] | None) -> float | None:
        if pending is None:
            return None
        host, event = pending
        if event is not None:
            event.synchronize()  # recorded right after that step's forward: already passed
        value = float(host)
        self.check_loss(value)
        return value

    def _micro_batches(self, inputs: Any, labels: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
        if self.accumulation == 1:
            return [(inputs, labels)]
        size = math.ceil(len(labels) / self.accumulation)
        return [(slice_inputs(inputs, slice(i, i + size)), labels[i : i + size]) for i in range(0, len(labels), size)]

    def _backward(self, inputs: Any, labels: torch.Tensor) -> torch.Tensor:
        if self.engine is None:
            loss = self.objective.loss(self.forward_model, inputs, labels, self.generator)
            loss.backward()
            return loss.detach()
        with self.engine.accelerator.autocast():
            loss = self.objective.loss(self.forward_model, inputs, labels, self.generator)
        self.engine.accelerator.backward(loss)  # Accelerate divides by grad_accumulation itself
        return loss.detach().float()

    def check_loss(self, value: float) -> None:
        """Stop on a non-finite loss, or one above ``divergence_factor`` × the reference: the lowest loss of the
        first ``reference_steps`` steps *seen so far*, so every step after the first is checked — a run shorter
        than the window (3 steps at ``lr: 3000``) cannot finish as a normal result. The loss checked is the last
        finished step's (checked one step late, without a GPU sync): its 1-based number is ``self.step``."""
        key = self.config_key
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the loss became {value} at step {max(self.step, 1)}; lower {key}.lr or set "
                                     f"{key}.grad_clip (finished rounds are kept)")
        factor = self.recipe.divergence_factor
        if self.reference and factor > 0:
            reference = min(self.reference)
            if value > factor * max(reference, 0.1):
                raise DivergenceError(f"training diverged: the loss reached {value:.3g} at step {max(self.step, 1)}, "
                                      f"over {factor:g}× its first steps' value {reference:.3g}; lower {key}.lr or set "
                                      f"{key}.grad_clip (or raise {key}.divergence_factor); finished rounds are kept")
        if len(self.reference) < self.reference_steps:
            self.reference.append(value)

    def check_weights(self) -> None:
        """Stop when a weight or a BatchNorm statistic is no longer finite."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise DivergenceError(f"training diverged: {name} holds NaN or infinite values after step {self.step}; "
                                      f"lower {self.config_key}.lr or set {self.config_key}.grad_clip; finished "
                                      "rounds are kept")
