"""Label conventions of the dense tasks (object detection, semantic segmentation), in one place.

Detection: a split's ``y`` is a padded float tensor ``[N, M, 5]`` = (class, x0, y0, x1, y1) in pixels of the
(resized) image, class -1 = padding — a tensor, so the loader, ``data_on_device`` and the seeded epoch order
work unchanged. Segmentation: ``y`` is ``[N, H, W]`` integers (uint8 from files), 255 = ignore (VOC's "void"
border convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ticketlab.errors import DataError

DENSE_HEADS = ("detection", "segmentation")


def dense_head(kind: str):  # noqa: ANN201  a decorator
    """Mark a task factory with the dense head its tasks need (``--dry-run`` times that head without data)."""
    def mark(factory):  # noqa: ANN001, ANN202
        factory.head = kind
        return factory

    return mark
IGNORE_INDEX = 255
PADDING_CLASS = -1


def pad_targets(per_image: Sequence[np.ndarray]) -> torch.Tensor:
    """Per-image ``[k, 5]`` rows -> ``[N, max k, 5]`` float32, padded with class -1 (at least one slot)."""
    width = max([len(rows) for rows in per_image] + [1])
    out = np.zeros((len(per_image), width, 5), dtype=np.float32)
    out[..., 0] = PADDING_CLASS
    for i, rows in enumerate(per_image):
        if len(rows):
            out[i, : len(rows)] = rows
    return torch.from_numpy(out)


def check_dense_labels(task: str, head: str, num_classes: int, split_name: str, y: torch.Tensor) -> None:
    """Reject targets that do not follow the conventions above or whose classes do not fit ``num_classes``."""
    where, k = f"task {task!r}: {split_name}", num_classes
    if head == "detection":
        if y.dim() != 3 or y.shape[-1] != 5 or not y.is_floating_point() or not torch.isfinite(y).all():
            raise DataError(f"{where} targets must be finite floats [N, M, 5] = (class, x0, y0, x1, y1), got "
                            f"{y.dtype} {list(y.shape)}; build them with a detection task")
        real = y[y[..., 0] != PADDING_CLASS]
        if len(real) and (real[:, 0].min() < 0 or real[:, 0].max() >= k or bool((real[:, 0] % 1 != 0).any())):
            raise DataError(f"{where} box classes span [{float(real[:, 0].min()):g}, {float(real[:, 0].max()):g}] "
                            f"but the task has {k} classes (0..{k - 1}, -1 = padding); fix the annotations")
        if len(real) and bool(((real[:, 3] <= real[:, 1]) | (real[:, 4] <= real[:, 2])).any()):
            raise DataError(f"{where} has a box with x1 <= x0 or y1 <= y0; drop empty boxes from the annotations")
        return
    if y.dim() != 3 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{where} labels must be integer maps [N, H, W] (255 = ignore), got {y.dtype} "
                        f"{list(y.shape)}; build them with a segmentation task")
    scored = y[y != IGNORE_INDEX]
    if len(scored) and (int(scored.min()) < 0 or int(scored.max()) >= k):
        raise DataError(f"{where} label maps hold values in [{int(scored.min())}, {int(scored.max())}] but the task "
                        f"has {k} classes (0..{k - 1}, 255 = ignore); fix the label maps or num_classes")
