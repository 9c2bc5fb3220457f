"""Retrieval scoring: R@k in both directions from an image-text matching score matrix."""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.data.base import Split, model_device
from ticketlab.metrics import METRICS

IMAGE_KEYS = ("image_feats", "image_boxes", "image_mask", "region_labels")


def recall_at_k(scores: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``scores[t, i]`` for caption t and image i, where caption t belongs to image t.

    Ties count against the true match (a pessimistic rank), so a constant scorer gets R@1 = 0.
    """
    true = scores.diagonal()
    text_to_image = (scores >= true[:, None]).sum(1) - 1  # images ranked at or above the right one
    image_to_text = (scores >= true[None, :]).sum(0) - 1
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = float((text_to_image < k).float().mean())
        out[f"i2t_r{k}"] = float((image_to_text < k).float().mean())
    return out


@torch.no_grad()
def itm_scores(model: nn.Module, split: Split) -> torch.Tensor:
    """Match score (logit of 'matched' minus 'not matched') of every caption with every image of a gallery."""
    was_training = model.training
    model.eval()
    n = len(split)
    device = model_device(model)
    images = {k: split.x[k].to(device) for k in IMAGE_KEYS if k in split.x}
    text = split.x["text_ids"].to(device)
    rows = []
    for t in range(n):
        logits = model({"text_ids": text[t : t + 1].expand(n, -1, -1), **images})
        rows.append((logits[:, 1] - logits[:, 0]).cpu())
    model.train(was_training)
    return torch.stack(rows)


@METRICS.register("retrieval")
def retrieval_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """The score is mean R@1 over both directions (the study reports R@1)."""
    recalls = recall_at_k(itm_scores(model, split))
    return {"score": (recalls["t2i_r1"] + recalls["i2t_r1"]) / 2, **recalls}
