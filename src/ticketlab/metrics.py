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
    """Top-1 accuracy: the fraction of examples whose arg-max class is the label."""
    was_training = model.training
    model.eval()
    correct = 0
    device = model_device(model)
    for start in range(0, len(split), batch_size):
        logits = model(move_inputs(split.inputs(slice(start, start + batch_size)), device))
        correct += int((logits.argmax(-1).cpu() == split.y[start : start + batch_size]).sum())
    model.train(was_training)
    return {"score": correct / len(split)}


@torch.no_grad()
def predictions(model: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
    """The model's predicted class of every sample of ``split``, in order."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = [model(move_inputs(split.inputs(slice(start, start + batch_size)), device)).argmax(-1).cpu()
           for start in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def classification_scores(model: nn.Module, split: Split) -> dict[str, float]:
    """Accuracy, macro F1 and Matthews correlation of one pass over ``split`` (scikit-learn's definitions)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    y, pred = split.y.numpy(), predictions(model, split).numpy()
    return {"accuracy": float((y == pred).mean()) if len(y) else 0.0,
            "f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(y, pred))}


@METRICS.register("f1")
def f1_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """Macro F1 (accuracy and MCC reported alongside)."""
    scores = classification_scores(model, split)
    return {"score": scores["f1"], **scores}


@METRICS.register("mcc")
def mcc_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """Matthews correlation (CoLA's metric; accuracy and F1 reported alongside). Chance is 0."""
    scores = classification_scores(model, split)
    return {"score": scores["mcc"], **scores}


def chance_score(metric: str, labels: torch.Tensor) -> float | None:
    """The score of always predicting the most frequent label (None where that is not defined here)."""
    if not len(labels):
        return None
    own = getattr(METRICS.get(metric), "chance", None) if metric in METRICS else None
    if own is not None:  # a metric that defines its own chance level (dense_metrics: mAP, mIoU)
        return own(labels)
    counts = torch.bincount(labels.flatten())
    majority = float(counts.max()) / len(labels)
    if metric == "accuracy":
        return majority
    if metric == "mcc":
        return 0.0
    if metric == "retrieval":  # mean R@1 of a random ranking over a gallery of one item per test pair
        return 1.0 / len(labels)
    if metric == "f1":  # the majority class has F1 2p/(1+p), every other class 0; macro over the classes present
        return 2 * majority / (1 + majority) / int((counts > 0).sum())
    return None


def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    return accuracy_metric(model, split, batch_size)["score"]
