"""What the file-backed dense tasks (``coco_detection``, ``voc_segmentation``) share: the split rule, VOC's
split files, image headers, and building the task from per-split files and targets.

Split rule (nothing is ever chosen on test data): three published splits are used as given; a published
train + held-out pair (COCO's train2017 / val2017, VOC 2012's train / val, VOC 2007's trainval / test) keeps
the held-out set as the test split and cuts validation from train (``val_fraction``, seeded); a single
annotated set is cut into train / val / test by ``val_fraction`` and ``test_fraction``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ticketlab.data.base import Split, Task, split_indices
from ticketlab.data.loader import FileImage, LazyImages
from ticketlab.errors import DataError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
SPLITS = ("train", "val", "test")


def existing(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist; check task.options.path")
    return root


def image_size_of(file: Path, what: str) -> tuple[int, int]:
    """(width, height) from the image's header; a missing or unreadable image is a DataError naming ``what``."""
    from PIL import Image

    if not file.is_file():
        raise DataError(f"{what}: image {file} does not exist; add the image or remove its annotation")
    try:
        with Image.open(file) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: {file} is not a readable image ({type(exc).__name__}); replace it or remove "
                        "its annotation") from exc


def voc_split_ids(root: Path, sets: str) -> dict[str, list[str]] | None:
    """Image ids per published split from ``root/ImageSets/<sets>/*.txt``: ``{train, test}`` (trainval or train +
    test; else train + val, val as the test), or None without split files."""
    folder = root / "ImageSets" / sets

    def read(name: str) -> list[str] | None:
        file = folder / f"{name}.txt"
        if not file.is_file():
            return None
        return [line.split()[0] for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

    test = read("test")
    if test is not None:
        train = read("trainval") or read("train")
        if not train:
            raise DataError(f"{folder} has test.txt but no trainval.txt or train.txt; add the training ids")
        return {"train": train, "test": test}
    train, val = read("train"), read("val")
    if train and val:
        return {"train": train, "test": val}
    return None


def assign_splits(published: dict[str, list[int]] | None, count: int, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Row indices per split (see the module's split rule); ``published`` maps split names to rows."""
    if published is not None and set(published) == set(SPLITS):
        return {s: np.asarray(published[s], dtype=np.int64) for s in SPLITS}
    if published is not None:
        train_rows = np.asarray(published["train"], dtype=np.int64)
        keep, val, _ = split_indices(len(train_rows), val_fraction, 0.0, seed)
        return {"train": train_rows[np.sort(keep)], "val": train_rows[np.sort(val)],
                "test": np.asarray(published.get("test", published.get("val")), dtype=np.int64)}
    train, val, test = split_indices(count, val_fraction, test_fraction, seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def dense_task(name: str, files: list[Path], targets: torch.Tensor, rows: dict[str, np.ndarray], classes: list[str],
               image_size: int, head: str, where: str) -> Task:
    """A detection / segmentation task: images decoded lazily and resized to ``image_size``; targets indexed."""
    if not files:
        raise DataError(f"{where}: no annotated images found; check task.options.path and its layout")
    images = LazyImages(FileImage(files), np.arange(len(files)), image_size, where)
    splits = {}
    for split, index in rows.items():
        if not len(index):
            raise DataError(f"{where}: the {split} split is empty; add images or change val_fraction / test_fraction")
        splits[split] = Split(images.subset(index), targets[torch.as_tensor(index)])
    metric = "coco_map" if head == "detection" else "miou"
    return Task(name, len(classes), **splits, class_names=classes, head=head, metric=metric)
