"""V+L scoring beyond accuracy: retrieval R@k in both directions over an image-text gallery, RefCOCO box IoU as
UNITER scores it, and VCR's Q->A accuracy under its own name."""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.data.base import Split, model_device
from ticketlab.errors import DataError
from ticketlab.metrics import METRICS, accuracy_metric, predictions

IMAGE_KEYS = ("image_feats", "image_boxes", "image_mask", "region_labels")
GALLERY_IMAGE = "gallery_image"  # per row (on-disk retrieval): its image's index among the split's distinct images
TARGET_BOX, TARGET_IMAGE_SIZE = "target_box", "target_image_size"  # RefCOCO: [N, 4] pixels x0 y0 x1 y1, [N, 2] w h


def recall_at_k(scores: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                caption_image: torch.Tensor | None = None) -> dict[str, float]:
    """``scores[t, i]`` for caption t and image i, where caption t belongs to image ``caption_image[t]`` (default:
    image t, one caption per image). Text->image ranks the caption's image; image->text ranks the best-ranked of the
    image's captions (UNITER's itm_eval), over the images that have a caption.

    Ties count against the true match (a pessimistic rank: wrong items scoring at least as high rank above it), so a
    constant scorer gets R@1 = 0.
    """
    captions, images = scores.shape
    owner = torch.arange(captions) if caption_image is None else caption_image.long().cpu()
    true = owner[:, None] == torch.arange(images)[None, :]
    text_to_image = ((scores >= scores.gather(1, owner[:, None])) & ~true).sum(1)
    best = scores.masked_fill(~true, float("-inf")).max(0).values
    image_to_text = ((scores >= best[None, :]) & ~true).sum(0)[true.any(0)]
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = float((text_to_image < k).float().mean())
        out[f"i2t_r{k}"] = float((image_to_text < k).float().mean())
    return out


def gallery(split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows holding the gallery's captions, one row per gallery image, and each caption's image index. Generated
    galleries: every row is a caption of its own image. On disk: the captions are the matching rows (label 1), the
    images every distinct image of the split (those with no caption stay as distractors)."""
    if GALLERY_IMAGE not in split.x:
        rows = torch.arange(len(split))
        return rows, rows, rows
    owner = split.x[GALLERY_IMAGE].cpu()
    captions = (split.y.cpu() == 1).nonzero().flatten()
    if not len(captions):
        raise DataError("a retrieval gallery has no matching caption (label 1); give val/test matching pairs")
    first = torch.full((int(owner.max()) + 1,), len(owner)).scatter_reduce(0, owner, torch.arange(len(owner)), "amin")
    return captions, first, owner[captions]


@torch.no_grad()
def itm_scores(model: nn.Module, split: Split) -> torch.Tensor:
    """Match score (logit of 'matched' minus 'not matched') of every gallery caption with every gallery image."""
    was_training = model.training
    model.eval()
    captions, image_rows, _ = gallery(split)
    device = model_device(model)
    images = {k: split.x[k][image_rows].to(device) for k in IMAGE_KEYS if k in split.x}
    text = split.x["text_ids"][captions].to(device)
    rows = []
    for t in range(len(captions)):
        logits = model({"text_ids": text[t : t + 1].expand(len(image_rows), -1, -1), **images})
        rows.append((logits[:, 1] - logits[:, 0]).cpu())
    model.train(was_training)
    return torch.stack(rows)


@METRICS.register("retrieval")
def retrieval_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """The score is mean R@1 over both directions (the study reports R@1)."""
    recalls = recall_at_k(itm_scores(model, split), caption_image=gallery(split)[2])
    return {"score": (recalls["t2i_r1"] + recalls["i2t_r1"]) / 2, **recalls}


def majority_chance(labels: torch.Tensor) -> float:
    """The rate of the most frequent label: the chance level of VCR Q->A exactly; of the VQA score and RefCOCO box IoU
    approximately (labels alone hold no annotators' answers or boxes)."""
    return float(torch.bincount(labels.flatten().cpu()).max()) / len(labels) if len(labels) else 0.0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of pixel boxes ``[..., 4]`` (x, y, w, h) as UNITER's ``computeIoU`` (data/re.py) computes it: inclusive
    pixel ends for the intersection (``x + w - 1``, area ``+1`` per side), plain ``w·h`` areas for the union."""
    x1, y1 = torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1])
    x2 = torch.minimum(a[..., 0] + a[..., 2] - 1, b[..., 0] + b[..., 2] - 1)
    y2 = torch.minimum(a[..., 1] + a[..., 3] - 1, b[..., 1] + b[..., 3] - 1)
    inter = torch.where((x1 < x2) & (y1 < y2), (x2 - x1 + 1) * (y2 - y1 + 1), torch.zeros_like(x1))
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter)


def xywh(box: torch.Tensor) -> torch.Tensor:
    return torch.cat([box[..., :2], box[..., 2:4] - box[..., :2]], -1)


def scored_predictions(model: nn.Module, split: Split, key: str, metric: str, need: str) -> torch.Tensor:
    """The model's predictions on a split that carries ``key``, the per-sample targets ``metric`` scores against."""
    if not isinstance(split.x, dict) or key not in split.x:
        raise DataError(f"metric {metric} needs {need}, or use metric accuracy")
    return predictions(model, split)


@METRICS.register("refcoco_iou")
def refcoco_iou_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """RefCOCO(+/g) accuracy as UNITER scores it: the chosen region's box has IoU > 0.5 with the ground-truth box."""
    pred = scored_predictions(model, split, TARGET_BOX, "refcoco_iou", "ground-truth boxes: build the task with "
                              "vl_disk from refcoco samples with a box [x0, y0, x1, y1]")
    size = split.x[TARGET_IMAGE_SIZE].cpu().double().repeat(1, 2)  # [N, 4]: w h w h
    regions = split.x["image_boxes"][:, 0, :, :4].cpu().double()  # [N, R, 4] normalised x0 y0 x1 y1
    chosen = torch.round(regions[torch.arange(len(pred)), pred] * size * 1000) / 1000  # undo float32 drift (1e-3 px)
    iou = box_iou(xywh(chosen), xywh(split.x[TARGET_BOX].cpu().double()))
    return {"score": float((iou > 0.5).float().mean()) if len(pred) else 0.0,
            "region_accuracy": float((pred == split.y.cpu()).float().mean()) if len(pred) else 0.0,
            "mean_iou": float(iou.mean()) if len(pred) else 0.0}


refcoco_iou_metric.chance = majority_chance  # type: ignore[attr-defined]


@METRICS.register("vcr_qa")
def vcr_qa_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """VCR Q->A accuracy: the fraction of questions whose highest-scored of the 4 answers is the right one."""
    return accuracy_metric(model, split)


vcr_qa_metric.chance = majority_chance  # type: ignore[attr-defined]
