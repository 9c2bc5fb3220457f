"""VILLA / FreeLB-style adversarial training in the embedding space of a V+L model.

Loss = task loss on the clean input + the mean over K PGD steps of (task loss on the perturbed
input + ``kl_weight`` × symmetric KL between clean and perturbed predictions). The perturbations δ
live on the word embeddings and on the projected image features; each step moves δ along its
L2-normalised gradient by ``step_size`` (per sample) and, with ``max_norm`` > 0, projects it back onto
the L2 ball. As in FreeLB, the parameter gradients of every perturbed pass are accumulated (here by
summing the losses into one backward); δ is a constant for the parameters.

δ starts at zero, and the first ascent direction is the clean loss's gradient w.r.t. the embeddings,
so K steps cost K extra forward passes. Usable in any round: ``objective: villa`` with
``objective_options: {steps: 3, step_size: 1e-3, kl_weight: 1.5}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.objectives.base import OBJECTIVES, Objective


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) + KL(q‖p), batch-mean."""
    log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
            + F.kl_div(log_p, log_q, log_target=True, reduction="batchmean"))


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def ascend(delta: torch.Tensor, grad: torch.Tensor, step_size: float, max_norm: float) -> torch.Tensor:
    """One L2 PGD step: ``δ + step_size · g / ‖g‖`` per sample, projected onto ``‖δ‖ ≤ max_norm`` if > 0."""
    delta = delta + step_size * grad / per_sample_norm(grad).clamp_min(1e-12)
    if max_norm > 0:
        delta = delta * (max_norm / per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta.detach()


@dataclass
class AdversarialTrace:
    """What one adversarial loss computed (for tests and logging)."""

    clean_loss: float = 0.0
    perturbed_losses: list[float] = field(default_factory=list)  # task loss at δ_1..δ_K
    delta_norms: list[tuple[float, float]] = field(default_factory=list)  # max per-sample ‖δ_text‖, ‖δ_image‖


def adversarial_loss(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, steps: int,
                     step_size: float, max_norm: float, kl_weight: float, adv_weight: float = 1.0,
                     trace: AdversarialTrace | None = None) -> torch.Tensor:
    backbone = model.backbone
    if not hasattr(backbone, "embed"):
        raise ConfigError("adversarial training needs a V+L model (model.name: uniter) that exposes its embeddings")
    # raw image features (VisualBERT's input) carry no graph: make them a leaf so δ gets a gradient
    word, image = (e if e.requires_grad else e.detach().requires_grad_(True) for e in backbone.embed(inputs))
    clean = model.forward_head(backbone.encode(word, image, inputs))
    clean_loss = F.cross_entropy(clean, labels)
    grads = torch.autograd.grad(clean_loss, [word, image], retain_graph=True, allow_unused=True)
    deltas = [ascend(torch.zeros_like(e), torch.zeros_like(e) if g is None else g, step_size, max_norm)
              for e, g in zip((word, image), grads, strict=True)]
    adversarial = clean_loss.new_zeros(())
    for k in range(steps):
        for d in deltas:
            d.requires_grad_(True)
        perturbed = model.forward_head(backbone.encode(word + deltas[0], image + deltas[1], inputs))
        task_loss = F.cross_entropy(perturbed, labels)
        step_loss = task_loss + kl_weight * symmetric_kl(clean, perturbed)
        adversarial = adversarial + step_loss / steps
        if trace is not None:
            trace.perturbed_losses.append(float(task_loss.detach()))
            trace.delta_norms.append(tuple(float(per_sample_norm(d.detach()).max()) for d in deltas))
        if k + 1 < steps:
            step_grads = torch.autograd.grad(step_loss, deltas, retain_graph=True)
            deltas = [ascend(d.detach(), g, step_size, max_norm) for d, g in zip(deltas, step_grads, strict=True)]
    if trace is not None:
        trace.clean_loss = float(clean_loss.detach())
    return clean_loss + adv_weight * adversarial


@OBJECTIVES.register("villa")
class VillaObjective(Objective):
    """Task cross-entropy with VILLA-style adversarial regularisation (defaults: the study's 3 steps, 1e-3, KL 1.5)."""

    model_only = False

    name = "villa"

    def __init__(self, steps: int = 3, step_size: float = 1e-3, max_norm: float = 0.0, kl_weight: float = 1.5,
                 adv_weight: float = 1.0) -> None:
        super().__init__()
        if steps < 1 or step_size <= 0 or max_norm < 0 or kl_weight < 0 or adv_weight < 0:
            raise ConfigError("villa needs steps >= 1, step_size > 0 and max_norm, kl_weight, adv_weight >= 0")
        self.steps, self.step_size, self.max_norm = steps, step_size, max_norm
        self.kl_weight, self.adv_weight = kl_weight, adv_weight

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return adversarial_loss(model, inputs, labels, self.steps, self.step_size, self.max_norm, self.kl_weight,
                                self.adv_weight)
