"""Tasks (datasets with train/val/test splits), all offline. ``TASKS`` maps a name to ``(**options) -> Task``.

A leaf: task plug-ins (``data.scenes``, ``data.digits``, ``data.files``, ``vl.tasks``) register here.

Every image task yields float tensors ``[N, 3, S, S]`` normalised to about [-1, 1], so a ticket found
on one task can be transferred to any other of the same input size.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ticketlab.data.dense_labels import DENSE_HEADS, check_dense_labels
from ticketlab.errors import DataError
from ticketlab.registry import Registry

Inputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]


@dataclass
class Split:
    x: torch.Tensor | dict[str, torch.Tensor]  # images, or named tensors (V+L: token ids, region features...)
    y: torch.Tensor
    patches: torch.Tensor | None = None  # optional per-sample patch indices [N, K] (patch-ticket students)

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, index: torch.Tensor | slice) -> Inputs:
        """Model inputs of the selected samples: images, (images, patch indices) or a dict of named tensors."""
        if isinstance(self.x, dict):
            return {k: v[index] for k, v in self.x.items()}
        return self.x[index] if self.patches is None else (self.x[index], self.patches[index])

    def majority_rate(self) -> float:
        """The accuracy of always predicting the most frequent label (the chance level of this split)."""
        return float(torch.bincount(self.y.flatten()).max()) / len(self.y) if len(self.y) else 0.0

    def input_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.x) if isinstance(self.x, dict) else {"x": self.x}


@dataclass
class Task:
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    class_names: list[str] = field(default_factory=list)
    head: str = "linear"  # the head kind this task needs (``HEADS``): a V+L pointer, multiple choice...
    metric: str = "accuracy"  # how the task is scored (``METRICS``): accuracy, retrieval recall...

    def validate(self) -> Task:
        """Reject empty splits and labels that do not fit ``num_classes``, naming the split."""
        if self.num_classes < (1 if self.head == "detection" else 2):
            raise DataError(f"task {self.name!r} has {self.num_classes} class(es); a classification task needs >= 2")
        for split_name in ("train", "val", "test"):
            split: Split = getattr(self, split_name)
            if len(split) == 0:
                raise DataError(f"task {self.name!r}: the {split_name} split is empty; provide data for it")
            for key, tensor in split.input_tensors().items():
                if tensor.shape[0] != split.y.shape[0]:
                    raise DataError(f"task {self.name!r}: {split_name} has {tensor.shape[0]} inputs ({key}) but "
                                    f"{split.y.shape[0]} labels")
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise DataError(f"task {self.name!r}: {split_name} inputs ({key}) contain NaN or infinite values")
            if self.head in DENSE_HEADS:  # boxes or label maps, not one class per sample
                check_dense_labels(self.name, self.head, self.num_classes, split_name, split.y)
                continue
            if split.y.dtype.is_floating_point or split.y.dtype == torch.bool:
                raise DataError(f"task {self.name!r}: {split_name} labels must be integers, got {split.y.dtype}")
            low, high = int(split.y.min()), int(split.y.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"task {self.name!r}: {split_name} labels span [{low}, {high}] but the task has "
                    f"{self.num_classes} classes (labels must be 0..{self.num_classes - 1}); fix the labels"
                )
        return self


TASKS: Registry = Registry("task")
# ``--smoke``: each file-backed task registers, beside its reader, a writer of tiny files in its own format:
# (options, folder) -> the path its options should name. See ``data/smoke_files.py`` for the shared primitives.
SMOKE_WRITERS: Registry = Registry("smoke data writer")


def dry_run_hooks(probe: Callable[[dict], int | None]) -> Callable[[Callable], Callable]:
    """Give a file-backed task its ``--dry-run`` hooks (``ticketlab.dry_run``) from one cheap ``probe(options)``
    beside its reader: the training split's size (None: unknown) from file sizes and headers, raising DataError
    (problem; fix) for what is missing or malformed. ``dry_check`` lists that problem; ``dry_count`` is the probe."""
    def attach(factory: Callable) -> Callable:
        def dry_check(options: dict) -> list[str]:
            try:
                probe(options)
            except DataError as exc:
                return [str(exc)]
            return []

        factory.dry_check, factory.dry_count = dry_check, probe  # type: ignore[attr-defined]
        return factory

    return attach


def slice_inputs(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    """The selected samples of a batch of model inputs (a tensor, a tuple of tensors or a dict of them)."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(v[index] for v in inputs)
    return inputs[index]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def move_inputs(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(v.to(device) for v in inputs)
    return inputs.to(device)


def build_task(name: str, options: dict | None = None, defaults: dict | None = None) -> Task:
    """The task ``name`` with ``options``; ``defaults`` (what the model implies: image size, tokenizer) fill the
    options the task takes and the config leaves out."""
    options = dict(options or {})
    accepted = inspect.signature(TASKS.get(name)).parameters
    for key, value in (defaults or {}).items():
        if key in accepted and key not in options and value is not None:
            options[key] = value
    return TASKS.build(name, **options).validate()


def images_to_tensor(images: np.ndarray, image_size: int | None) -> torch.Tensor:
    """uint8/float images (N,H,W), (N,H,W,C) or (N,C,H,W) -> float (N,3,S,S) in [-1, 1]."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise DataError(f"images must have 3 or 4 dimensions (N,H,W[,C]), got shape {np.shape(images)}")
    x = torch.as_tensor(np.ascontiguousarray(array)).float()
    if np.issubdtype(array.dtype, np.integer) or x.max() > 1.0:
        x = x / 255.0
    x = x[:, :3]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).contiguous()


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """A seeded shuffle cut into train/val/test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = math.ceil(n * val_fraction), math.ceil(n * test_fraction)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def label_names(values: Iterable[object]) -> list[str]:
    """The class names of string labels — their distinct values, sorted — whose positions are the label ids: the one
    mapping every loader records."""
    return sorted({v.decode() if isinstance(v, bytes) else str(v) for v in values})


def subset(x: torch.Tensor | object, index: np.ndarray | torch.Tensor) -> torch.Tensor | object:
    """The selected rows of a split's inputs: a tensor, or lazily decoded images (``subset`` keeps them lazy)."""
    return x.subset(np.asarray(index)) if hasattr(x, "subset") else x[index]


def with_official_test(name: str, x_train: torch.Tensor | object, y_train: torch.Tensor, test: Split,
                       classes: list[str], val_fraction: float, seed: int) -> Task:
    """A dataset published with a test split: validation is a seeded cut of the training data (rows kept in file
    order), the published test split stays the test — nothing is ever chosen on it."""
    train, val, _ = split_indices(len(y_train), val_fraction, 0.0, seed)
    train, val = np.sort(train), np.sort(val)
    return Task(name, len(classes), Split(subset(x_train, train), y_train[train]),
                Split(subset(x_train, val), y_train[val]), test, class_names=classes)


def task_from_arrays(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, val_fraction: float,
                     test_fraction: float, seed: int, class_names: list[str] | None = None) -> Task:
    if len(y) == 0:
        raise DataError(f"task {name!r}: the dataset is empty; check the path and its contents")
    if len(x) != len(y):
        raise DataError(f"task {name!r}: {len(x)} inputs but {len(y)} labels; every input needs exactly one label")
    train, val, test = split_indices(len(y), val_fraction, test_fraction, seed)
    splits = [Split(subset(x, idx), y[idx]) for idx in (train, val, test)]
    return Task(name, num_classes, *splits, class_names=class_names or [])
