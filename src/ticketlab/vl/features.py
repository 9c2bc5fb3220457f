"""Image features for the single-stream model: one feature per object region (UNITER) or per patch (ViLT).

Both kinds give, per image, ``R`` feature vectors of size ``3·p²`` (the region's crop, or the patch,
resized to p×p pixels) with a 7-d box ``(x0, y0, x1, y1, w, h, w·h)`` normalised by the image size, a
validity mask (regions are padded to the maximum object count) and, for regions, the object's class
(shape × colour, the target of masked-region classification; -1 for patches and padding).

Simplification: UNITER's regions come from a Faster R-CNN detector; ours are the objects' true boxes
(an oracle detector), with raw pixels as the region feature. Regions are listed in a seeded random
order so that their position carries no answer (the generator stores the largest object first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ticketlab.data.scenes import COLOURS, MAX_OBJECTS, SHAPES, Scene, SceneObject
from ticketlab.errors import ConfigError

FEATURE_KINDS = ("regions", "patches")
BOX_DIM = 7
REGION_CLASSES = len(SHAPES) * len(COLOURS)


@dataclass
class ImageFeatures:
    feats: torch.Tensor  # [N, R, 3·p²]
    boxes: torch.Tensor  # [N, R, 7]
    mask: torch.Tensor  # [N, R] bool, True = a real region / patch
    labels: torch.Tensor  # [N, R] region class, -1 where none
    object_slot: list[list[int]]  # per image: object index -> its region / patch index


def box_features(x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
    b = torch.stack([x0, y0, x1, y1], -1) / size
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return torch.cat([b, w[..., None], h[..., None], (w * h)[..., None]], -1)


def region_class(obj: SceneObject) -> int:
    return SHAPES.index(obj.shape) * len(COLOURS) + COLOURS.index(obj.colour)


def patch_features(images: torch.Tensor, scenes: list[Scene], patch: int) -> ImageFeatures:
    n, c, size, _ = images.shape
    if size % patch:
        raise ConfigError(f"image size {size} is not a multiple of the patch size {patch}; change task.options.patch")
    grid = size // patch
    feats = images.unfold(2, patch, patch).unfold(3, patch, patch)  # N, C, g, g, p, p
    feats = feats.permute(0, 2, 3, 1, 4, 5).reshape(n, grid * grid, c * patch * patch)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    x0, y0 = (cols.flatten() * patch).float(), (rows.flatten() * patch).float()
    boxes = box_features(x0, y0, x0 + patch, y0 + patch, size).expand(n, -1, -1)
    slots = [[min(int(o.y) // patch, grid - 1) * grid + min(int(o.x) // patch, grid - 1) for o in s.objects]
             for s in scenes]
    mask = torch.ones(n, grid * grid, dtype=torch.bool)
    return ImageFeatures(feats.contiguous(), boxes.contiguous(), mask, torch.full((n, grid * grid), -1), slots)


def region_features(images: torch.Tensor, scenes: list[Scene], patch: int, seed: int) -> ImageFeatures:
    n, c, size, _ = images.shape
    rng = np.random.default_rng(seed)
    feats = torch.zeros(n, MAX_OBJECTS, c * patch * patch)
    boxes = torch.zeros(n, MAX_OBJECTS, BOX_DIM)
    mask = torch.zeros(n, MAX_OBJECTS, dtype=torch.bool)
    labels = torch.full((n, MAX_OBJECTS), -1)
    slots = []
    for i, scene in enumerate(scenes):
        order = rng.permutation(len(scene.objects))  # order[slot] = object
        slot_of = [0] * len(scene.objects)
        for slot, obj_index in enumerate(order):
            obj = scene.objects[obj_index]
            x0, y0 = max(int(obj.x - obj.radius), 0), max(int(obj.y - obj.radius), 0)
            x1, y1 = min(int(np.ceil(obj.x + obj.radius)), size), min(int(np.ceil(obj.y + obj.radius)), size)
            crop = images[i : i + 1, :, y0:y1, x0:x1]
            feats[i, slot] = F.interpolate(crop, size=(patch, patch), mode="area").flatten()
            boxes[i, slot] = box_features(*(torch.tensor(float(v)) for v in (x0, y0, x1, y1)), size)
            mask[i, slot] = True
            labels[i, slot] = region_class(obj)
            slot_of[obj_index] = slot
        slots.append(slot_of)
    return ImageFeatures(feats, boxes, mask, labels, slots)


def image_features(images: torch.Tensor, scenes: list[Scene], kind: str, patch: int = 8,
                   seed: int = 0) -> ImageFeatures:
    """Features of normalised images ``[N, 3, S, S]`` drawn from ``scenes``."""
    if kind == "regions":
        return region_features(images, scenes, patch, seed)
    if kind == "patches":
        return patch_features(images, scenes, patch)
    raise ConfigError(f"unknown image feature kind {kind!r} in task.options.features; known: {', '.join(FEATURE_KINDS)}")
