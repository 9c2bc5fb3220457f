"""FCOS (Tian et al., ICCV 2019) targets, losses and post-processing, in plain torch.

Why here: torchvision (its detection models and ``torchvision.ops.nms``) does not import in this environment, so
the pieces the official code (``tianzhi0549/FCOS``, with its centre-sampling / GIoU / normalised-regression
improvements) uses are written out: per-location target assignment with the standard size range per level and
centre sampling (radius 1.5 strides), sigmoid focal loss (α 0.25, γ 2) over classes, GIoU loss on ltrb distances
weighted by the centerness target, centerness BCE, and at inference score threshold 0.05, top 1000 per level,
score = √(class prob · centerness), per-class NMS at IoU 0.6 and the top 100 per image.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the (resized) input image; location ``(i, j)`` of a level with stride
``s`` sits at ``(j·s + s/2, i·s + s/2)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CENTER_RADIUS = 1.5
SCORE_THRESHOLD = 0.05
PRE_NMS_TOP = 1000
NMS_IOU = 0.6
DETECTIONS_PER_IMAGE = 100
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def size_bounds(strides: list[float]) -> list[tuple[float, float]]:
    """FCOS's per-level range of the largest regression distance: [4s, 8s] for stride s (P3..P7 = 0-64, 64-128,
    ... 512-inf), the first level from 0 and the last level to infinity — with P3-P5 only, P5 takes every object
    larger than 128 px, as in FCOS without P6/P7."""
    bounds = [(4.0 * s, 8.0 * s) for s in strides]
    bounds[0] = (-1.0, bounds[0][1])
    bounds[-1] = (bounds[-1][0], math.inf)
    return bounds


def locations(height: int, width: int, stride: float, device: torch.device) -> torch.Tensor:
    """``[height·width, 2]`` (x, y) centres of a level's cells, row-major like ``tensor.flatten(2)``."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def flatten_levels(outputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Per-level maps -> ``cls [N, L, C]``, ``box [N, L, 4]``, ``ctr [N, L]``, points ``[L, 2]``, per-point stride,
    lower and upper size bound ``[L]``."""
    cls, box, ctr, points, stride, low, high = [], [], [], [], [], [], []
    for level, s in enumerate(outputs["strides"]):
        c = outputs["cls"][level]
        n, k, h, w = c.shape
        cls.append(c.flatten(2).transpose(1, 2))
        box.append(outputs["box"][level].flatten(2).transpose(1, 2))
        ctr.append(outputs["ctr"][level].flatten(1))
        points.append(locations(h, w, s, c.device))
        lo, hi = size_bounds(outputs["strides"])[level]
        for values, v in ((stride, s), (low, lo), (high, hi)):
            values.append(torch.full((h * w,), v, device=c.device))
    return (torch.cat(cls, 1).float(), torch.cat(box, 1).float(), torch.cat(ctr, 1).float(), torch.cat(points),
            torch.cat(stride), torch.cat(low), torch.cat(high))


def assign(points: torch.Tensor, stride: torch.Tensor, low: torch.Tensor, high: torch.Tensor, target: torch.Tensor,
           num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets: class per location (``num_classes`` = background) and ltrb distances ``[L, 4]``.

    A location is a candidate for a box when it lies in the box's centre region (``CENTER_RADIUS`` strides around
    the centre, clipped to the box) and the box's largest distance from it is in the level's size range; of several
    candidates the smallest box wins (FCOS's ambiguity rule). ``target`` rows are (class, x0, y0, x1, y1), class -1
    = padding."""
    boxes = target[target[:, 0] >= 0]
    count = len(points)
    if not len(boxes):
        return torch.full((count,), num_classes, dtype=torch.long, device=points.device), points.new_zeros(count, 4)
    labels, (x0, y0, x1, y1) = boxes[:, 0].long(), boxes[:, 1:].T
    xs, ys = points[:, :1], points[:, 1:]
    reg = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # [L, M, 4]
    radius = stride[:, None] * CENTER_RADIUS
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    region = torch.stack([xs - torch.maximum(cx - radius, x0), ys - torch.maximum(cy - radius, y0),
                          torch.minimum(cx + radius, x1) - xs, torch.minimum(cy + radius, y1) - ys], dim=2)
    largest = reg.max(2).values
    ok = (region.min(2).values > 0) & (largest >= low[:, None]) & (largest <= high[:, None])
    area = ((x1 - x0) * (y1 - y0))[None].expand(count, -1).masked_fill(~ok, math.inf)
    smallest, which = area.min(1)
    classes = torch.where(torch.isinf(smallest), torch.full_like(which, num_classes), labels[which])
    return classes, reg[torch.arange(count, device=points.device), which]


def centerness_target(reg: torch.Tensor) -> torch.Tensor:
    left_right, top_bottom = reg[:, [0, 2]], reg[:, [1, 3]]
    return torch.sqrt((left_right.min(1).values / left_right.max(1).values)
                      * (top_bottom.min(1).values / top_bottom.max(1).values))


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as ltrb distances from the same point (the official FCOS ``IOULoss('giou')``,
    with its +1 smoothing of the IoU)."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    inter_h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    hull = ((torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2]))
            * (torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3]))) + 1e-7
    inter = inter_w * inter_h
    union = target_area + pred_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    return 1.0 - (iou - (hull - union) / hull)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2017, summed: α-balanced BCE scaled by (1 - p_t)^γ."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha * ce * (1 - p_t) ** FOCAL_GAMMA).sum()


def fcos_loss(outputs: dict[str, Any], targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Focal loss / #positives + centerness-weighted GIoU / Σ centerness + centerness BCE / #positives (the
    official code averages the counts over GPUs; here each process normalises by its own batch's counts)."""
    cls, box, ctr, points, stride, low, high = flatten_levels(outputs)
    assigned = [assign(points, stride, low, high, t.float(), num_classes) for t in targets]
    labels = torch.stack([a[0] for a in assigned]).flatten()
    reg = torch.stack([a[1] for a in assigned]).flatten(0, 1)
    cls, box, ctr = cls.flatten(0, 1), box.flatten(0, 1), ctr.flatten()
    positive = labels < num_classes
    num_pos = max(float(positive.sum()), 1.0)
    one_hot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(cls.dtype)
    cls_loss = sigmoid_focal_loss(cls, one_hot) / num_pos
    if not positive.any():
        return cls_loss + 0.0 * (box.sum() + ctr.sum())  # every part stays in the graph (DDP)
    reg_t = reg[positive]
    ctr_t = centerness_target(reg_t)
    scale = stride.expand(len(targets), -1).flatten()[positive][:, None].to(reg_t.dtype)  # stride units, as the
    box_loss = (giou_loss(box[positive] / scale, reg_t / scale) * ctr_t).sum() / ctr_t.sum().clamp_min(1e-6)  # norm
    # regression of the official code computes the loss (its IoU's +1 smoothing is per stride, not per pixel)
    ctr_loss = F.binary_cross_entropy_with_logits(ctr[positive], ctr_t, reduction="sum") / num_pos
    return cls_loss + box_loss + ctr_loss


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` IoU of (x0, y0, x1, y1) boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as ``torchvision.ops.nms`` defines it: indices kept, by decreasing score; a box is dropped when
    its IoU with a kept higher-scoring box is > ``iou_threshold``."""
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    dropped = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not dropped[i]:
            keep.append(i)
            dropped |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class (torchvision's coordinate-offset trick: boxes of different classes never overlap)."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = labels.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


@torch.no_grad()
def fcos_detect(outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Per image: ``boxes [K, 4]`` (clipped to the image), ``scores [K]``, ``labels [K]``, K <= 100."""
    height, width = outputs["size"]
    results = []
    for image in range(outputs["cls"][0].shape[0]):
        boxes, scores, labels = [], [], []
        for level, stride in enumerate(outputs["strides"]):
            cls = outputs["cls"][level][image].float()
            h, w = cls.shape[-2:]
            probs = torch.sigmoid(cls.flatten(1).T)  # [h·w, C]
            candidate = probs > SCORE_THRESHOLD
            combined = probs * torch.sigmoid(outputs["ctr"][level][image].float().flatten())[:, None]
            combined = combined.masked_fill(~candidate, -1.0).flatten()
            top = min(int(candidate.sum()), PRE_NMS_TOP)
            values, index = combined.topk(top)
            where, cls_index = index // probs.shape[1], index % probs.shape[1]
            points = locations(h, w, stride, cls.device)[where]
            ltrb = outputs["box"][level][image].float().flatten(1).T[where]
            xyxy = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            boxes.append(xyxy)
            scores.append(values.sqrt())
            labels.append(cls_index)
        boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes_t, scores_t, labels_t, NMS_IOU)[:DETECTIONS_PER_IMAGE]
        results.append({"boxes": boxes_t[keep].cpu(), "scores": scores_t[keep].cpu(), "labels": labels_t[keep].cpu()})
    return results
