"""Self-supervised objectives: SimCLR (NT-Xent) and MoCo v2 (momentum key encoder + queue).

The losses are pure tensor functions (``nt_xent``, ``moco_infonce``); the objectives add projection
heads, views from :mod:`ticketlab.augment` and, for MoCo, the key encoder, which carries the
query encoder's mask (re-masked after every momentum update) so both encoders share one ticket.
Simplification: MoCo's shuffled BatchNorm across GPUs is not used (single process).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.augment import ContrastiveAugment
from ticketlab.data.base import Task, model_device
from ticketlab.masks import Mask
from ticketlab.objectives.base import OBJECTIVES, Objective
from ticketlab.registry import bounds


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over 2N views; positives are (i, i+N)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: the positive is the key of the same image, negatives are the queue."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ F.normalize(queue, dim=1).T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def projection_head(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = torch.cat([model.forward_features(x[i : i + batch_size].to(device)).cpu()
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return F.normalize(out, dim=1)


def knn_accuracy(model: nn.Module, task: Task, split: str, k: int = 10, bank_size: int = 2000) -> float:
    """Cosine k-NN classification with the train split as the memory bank (the usual SSL monitor)."""
    bank = features(model, task.train.x[:bank_size])
    bank_labels = task.train.y[:bank_size]
    query = getattr(task, split)
    sims = features(model, query.x) @ bank.T
    top, idx = sims.topk(min(k, len(bank_labels)), dim=1)
    votes = torch.zeros(len(query), task.num_classes)
    votes.scatter_add_(1, bank_labels[idx], torch.exp(top / 0.07))
    return float((votes.argmax(1) == query.y).float().mean())


class SelfSupervised(Objective):
    """Shared parts: views, projection head, k-NN evaluation."""

    model_only = False  # calls the backbone directly: gradients are averaged across ranks explicitly

    def __init__(self, temperature: float, projection_dim: int = 64, crop_scale: float = 0.3) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.augment = ContrastiveAugment(crop_scale=crop_scale)

    def evaluate(self, model: nn.Module, task: Task, split: str) -> float:
        return knn_accuracy(model, task, split)


@OBJECTIVES.register("simclr")
@bounds(temperature=(1e-6, None), projection_dim=(1, None), crop_scale=(0.01, 1.0))
class SimCLR(SelfSupervised):
    """SimCLR: NT-Xent between two augmented views of each image through a projection head."""

    name = "simclr"

    def __init__(self, temperature: float = 0.5, projection_dim: int = 64, crop_scale: float = 0.3) -> None:
        super().__init__(temperature, projection_dim, crop_scale)

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        self.projector = projection_head(model.feature_dim, self.projection_dim)

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        views = torch.cat([self.augment(inputs, generator), self.augment(inputs, generator)])
        z = self.projector(model.forward_features(views))
        return nt_xent(*z.chunk(2), self.temperature)


@OBJECTIVES.register("moco")
@bounds(temperature=(1e-6, None), projection_dim=(1, None), crop_scale=(0.01, 1.0), queue_size=(1, None),
        momentum=(0.0, 1.0))
class MoCo(SelfSupervised):
    """MoCo v2: query encoder = the model; key encoder = its momentum average, masked like the query."""

    name = "moco"

    def __init__(self, temperature: float = 0.2, projection_dim: int = 64, queue_size: int = 1024,
                 momentum: float = 0.99, crop_scale: float = 0.3) -> None:
        super().__init__(temperature, projection_dim, crop_scale)
        self.queue_size = queue_size
        self.momentum = momentum

    def get_extra_state(self) -> dict[str, int]:
        return {"queue_ptr": self.queue_ptr}  # saved in mid-round checkpoints with the queue itself

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.queue_ptr = int(state["queue_ptr"])

    def setup(self, model: nn.Module, mask: Mask | None) -> None:
        self.projector = projection_head(model.feature_dim, self.projection_dim)
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.projection_dim), dim=1))
        self.queue_ptr = 0
        self.pending_keys: torch.Tensor | None = None
        key_params = dict(self.key_backbone.named_parameters())
        self.key_masks = [] if mask is None else [
            (key_params[n.removeprefix("backbone.")], t.to(key_params[n.removeprefix("backbone.")].device,
                                                           key_params[n.removeprefix("backbone.")].dtype))
            for n, t in mask.tensors.items() if n.startswith("backbone.")
        ]
        self.mask_key_encoder()

    @torch.no_grad()
    def mask_key_encoder(self) -> None:
        for param, keep in self.key_masks:
            param.mul_(keep)

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        q = self.projector(model.forward_features(self.augment(inputs, generator)))
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_backbone(self.augment(inputs, generator))), dim=1)
        self.pending_keys = k
        return moco_infonce(q, k, self.queue, self.temperature)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        m = self.momentum
        for key, query in ((self.key_backbone, model.backbone), (self.key_projector, self.projector)):
            for pk, pq in zip(key.parameters(), query.parameters(), strict=True):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        self.mask_key_encoder()
        if self.pending_keys is not None:
            keys = self.pending_keys[: self.queue_size]
            idx = (self.queue_ptr + torch.arange(len(keys))) % self.queue_size
            self.queue[idx] = keys
            self.queue_ptr = int((self.queue_ptr + len(keys)) % self.queue_size)
            self.pending_keys = None
