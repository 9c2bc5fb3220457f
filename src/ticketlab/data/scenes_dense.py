"""Toy detection and segmentation from the scene generator: small, fast stand-ins for COCO and VOC.

The images are exactly those of the classification scene tasks with the same seed and size (each split its own
stream, ``seed * 1000 + split``), so ``scenes.stream_seeds`` keeps guarding against a downstream task that
reuses its pre-training task's images. Boxes are the tight boxes of the pixels each object paints (objects never
overlap), class = shape; label maps give every painted pixel its shape's class + 1, background 0.
"""

from __future__ import annotations

import numpy as np
import torch

from ticketlab.data.base import TASKS, Split, Task, images_to_tensor
from ticketlab.data.dense_labels import dense_head, pad_targets
from ticketlab.data.scenes import SHAPES, Scene, _shape_mask, generate_scenes
from ticketlab.registry import bounds


def scene_boxes(scene: Scene, size: int) -> np.ndarray:
    """``[k, 5]`` rows (shape class, x0, y0, x1, y1) of the scene's objects, in pixels."""
    rows = []
    for obj in scene.objects:
        ys, xs = np.nonzero(_shape_mask(obj, size))
        if len(xs):
            rows.append([SHAPES.index(obj.shape), xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def scene_label_map(scene: Scene, size: int) -> np.ndarray:
    """``[size, size]`` int64: 0 background, 1 + shape index where an object is painted."""
    labels = np.zeros((size, size), dtype=np.int64)
    for obj in scene.objects:
        labels[_shape_mask(obj, size)] = SHAPES.index(obj.shape) + 1
    return labels


def _dense_scene_task(kind: str, n_train: int, n_val: int, n_test: int, image_size: int, seed: int) -> Task:
    splits = []
    for offset, n in enumerate((n_train, n_val, n_test)):
        images, scenes = generate_scenes(n, seed * 1000 + offset, image_size, "default")
        if kind == "detection":
            y = pad_targets([scene_boxes(s, image_size) for s in scenes])
        else:
            y = torch.from_numpy(np.stack([scene_label_map(s, image_size) for s in scenes]))
        splits.append(Split(images_to_tensor(images, None), y))
    if kind == "detection":
        return Task("scenes_detection", len(SHAPES), *splits, class_names=list(SHAPES), head="detection",
                    metric="coco_map")
    return Task("scenes_segmentation", len(SHAPES) + 1, *splits, class_names=["background", *SHAPES],
                head="segmentation", metric="miou")


@TASKS.register("scenes_detection")
@dense_head("detection")
@bounds(n_train=(1, None), n_val=(1, None), n_test=(1, None), image_size=(32, 64))
def scenes_detection(n_train: int = 2000, n_val: int = 500, n_test: int = 1000, image_size: int = 32,
                     seed: int = 0) -> Task:
    """Object detection of the scene shapes (3 classes; boxes, COCO mAP)."""
    return _dense_scene_task("detection", n_train, n_val, n_test, image_size, seed)


@TASKS.register("scenes_segmentation")
@dense_head("segmentation")
@bounds(n_train=(1, None), n_val=(1, None), n_test=(1, None), image_size=(32, 64))
def scenes_segmentation(n_train: int = 2000, n_val: int = 500, n_test: int = 1000, image_size: int = 32,
                        seed: int = 0) -> Task:
    """Semantic segmentation of the scene shapes (background + 3 classes; mIoU)."""
    return _dense_scene_task("segmentation", n_train, n_val, n_test, image_size, seed)
