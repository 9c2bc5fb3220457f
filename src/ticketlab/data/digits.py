"""scikit-learn's real handwritten digits (1,797 8x8 images, 10 classes), upsampled to ``image_size``."""

from __future__ import annotations

import torch

from ticketlab.data.base import TASKS, Task, images_to_tensor, task_from_arrays
from ticketlab.registry import bounds


@TASKS.register("digits")
@bounds(image_size=(8, 512), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def digits(image_size: int = 32, val_fraction: float = 0.15, test_fraction: float = 0.25, seed: int = 0) -> Task:
    """scikit-learn's 1,797 handwritten 8×8 digits (10 classes), upscaled; ships with the package, works offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = images_to_tensor(bunch.images / 16.0, image_size)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return task_from_arrays("digits", x, y, 10, val_fraction, test_fraction, seed, [str(i) for i in range(10)])
