"""How a task is scored: ``METRICS`` maps a task's ``metric`` to ``(model, split) -> {"score": ..., ...}``.

``score`` is what best-checkpoint selection and every table use; other keys are reported alongside
(e.g. retrieval R@5 / R@10 in both directions).
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.data.base import Split, model_device, move_inputs
from ticketlab.registry import Registry

METRICS: Registry = Registry("metric")


@METRICS.register("accuracy")
@torch.no_grad()
def accuracy_metric(model: nn.Module, split: Split, batch_size: int = 512) -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct = 0
    device = model_device(model)
    for start in range(0, len(split), batch_size):
        logits = model(move_inputs(split.inputs(slice(start, start + batch_size)), device))
        correct += int((logits.argmax(-1).cpu() == split.y[start : start + batch_size]).sum())
    model.train(was_training)
    return {"score": correct / len(split)}


def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    return accuracy_metric(model, split, batch_size)["score"]
