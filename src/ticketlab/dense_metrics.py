"""Scores of the dense tasks: COCO box mAP (pycocotools' COCOeval) and mean IoU, with their chance levels.

``coco_map``: AP averaged over IoU 0.50:0.05:0.95 (COCO's primary metric) is the score; AP50 and AP75 are
reported beside it. The ground truth is the split's padded targets (class -1 = padding), every box area
``w·h``, no crowd regions; a split without boxes scores 0. Chance is 0.0: a detector that knows only the
labels' statistics places no box at the right place (said rather than estimated).
``miou``: one confusion matrix over the whole split (pixels labelled 255 ignored); a class absent from both
the predictions and the labels is left out of the mean. Chance: the most frequent class predicted everywhere.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketlab.data.base import Split, model_device, move_inputs
from ticketlab.data.dense_labels import IGNORE_INDEX, PADDING_CLASS
from ticketlab.errors import TicketlabError
from ticketlab.metrics import METRICS


def _head(model: nn.Module, attribute: str) -> Any:
    head = getattr(getattr(model, "module", model), "head", None)
    if not hasattr(head, attribute):
        raise TicketlabError(f"this metric needs a dense head (with {attribute}); build the model with the task's "
                             "head (detection / segmentation)")
    return head


@torch.no_grad()
def _batches(model: nn.Module, split: Split, batch_size: int) -> Any:
    """The model's outputs batch by batch (eval mode), with the batch's first index."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for start in range(0, len(split), batch_size):
            yield start, model(move_inputs(split.inputs(slice(start, start + batch_size)), device))
    finally:
        model.train(was_training)


def coco_ap(targets: torch.Tensor, detections: list[dict[str, torch.Tensor]], size: tuple[int, int]) -> dict[str, float]:
    """COCOeval's box AP, AP50, AP75 of ``detections`` (per image: boxes x0 y0 x1 y1, scores, labels) against the
    padded ``targets [N, M, 5]`` of images of ``size`` (height, width)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    height, width = size
    images, annotations, results = [], [], []
    classes: set[int] = set()
    for i, rows in enumerate(targets.tolist()):
        images.append({"id": i, "width": width, "height": height})
        for c, x0, y0, x1, y1 in rows:
            if c != PADDING_CLASS:
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c) + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
                classes.add(int(c))
    for i, found in enumerate(detections):
        for (x0, y0, x1, y1), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist(), strict=True):
            results.append({"image_id": i, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": score})
            classes.add(int(label))
    if not annotations or not results:
        return {"score": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap, ap50, ap75 = (max(float(v), 0.0) for v in evaluation.stats[:3])  # -1: no box of any class
    return {"score": ap, "ap50": ap50, "ap75": ap75}


@METRICS.register("coco_map")
def coco_map(model: nn.Module, split: Split, batch_size: int = 64) -> dict[str, float]:
    """COCO box mAP@[.5:.95] (pycocotools' COCOeval); AP50 and AP75 alongside."""
    head = _head(model, "detect")
    detections: list[dict[str, torch.Tensor]] = []
    for _, outputs in _batches(model, split, batch_size):
        detections += head.detect(outputs)
    return coco_ap(split.y, detections, tuple(split.x.shape[-2:]))


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` pixel counts, rows = label, columns = prediction; pixels labelled 255 are skipped."""
    labels, predicted = labels.flatten().long(), predicted.flatten().long()
    keep = labels != IGNORE_INDEX
    index = labels[keep] * num_classes + predicted[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_scores(matrix: torch.Tensor) -> dict[str, float]:
    """Mean IoU over the classes present in the labels or the predictions, and pixel accuracy."""
    matrix = matrix.double()
    hits = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - hits
    present = union > 0
    miou = float((hits[present] / union[present]).mean()) if present.any() else 0.0
    return {"score": miou, "pixel_accuracy": float(hits.sum() / matrix.sum().clamp_min(1))}


@METRICS.register("miou")
def miou(model: nn.Module, split: Split, batch_size: int = 64) -> dict[str, float]:
    """Mean intersection over union of the per-pixel classes over the split (255 = ignore); pixel accuracy too."""
    num_classes = int(_head(model, "num_classes").num_classes)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for start, logits in _batches(model, split, batch_size):
        labels = split.y[start : start + len(logits)].cpu()
        matrix += confusion_matrix(labels, logits.argmax(1).cpu(), num_classes)
    return iou_scores(matrix)


def _no_chance(labels: torch.Tensor) -> float:
    """mAP of a detector that knows only the labels' statistics: 0 (no box lands on an object)."""
    return 0.0


def _majority_miou(labels: torch.Tensor) -> float:
    """mIoU of predicting the most frequent labelled class at every pixel: IoU count_k / total for that class,
    0 for every other class present in the labels."""
    labels = labels.cpu()
    counts = np.bincount(labels[labels != IGNORE_INDEX].flatten().long().numpy())
    if not counts.sum():
        return 0.0
    return float(counts.max() / counts.sum() / (counts > 0).sum())


coco_map.chance = _no_chance  # type: ignore[attr-defined]
miou.chance = _majority_miou  # type: ignore[attr-defined]
