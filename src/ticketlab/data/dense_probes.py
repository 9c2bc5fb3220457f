"""What the ``--dry-run`` probes of the dense tasks (``coco_detection``, ``voc_segmentation``) share: presence of
many files from one directory listing (no stat, no decode per file), and the training split's size by the readers'
own split rule (:func:`ticketlab.data.dense_files.assign_splits`), so the estimate counts what training will see.
The probes themselves live beside their readers and read only a few headers (``HEADERS``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketlab.data.dense_files import assign_splits
from ticketlab.errors import DataError

HEADERS = 3  # images (and label maps) per dataset whose headers a probe reads; the rest are checked for presence


def option(factory: Callable, options: dict[str, Any], key: str) -> Any:
    """A task option as its reader resolves it: the config's value, else the factory's default (one place)."""
    return options.get(key, inspect.signature(factory).parameters[key].default)


def listing(folder: Path) -> set[str]:
    """The entry names of ``folder`` in one directory read (empty when it is not a folder)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def require_files(folder: Path, names: list[str], what: str, fix: str) -> None:
    """DataError (``what``: how many of ``names`` are missing from ``folder``, the first; ``fix``) unless all exist;
    one listing of ``folder``, a stat only for names not directly in it (e.g. in subfolders)."""
    present = listing(folder)
    missing = [n for n in names if n not in present and not (folder / n).is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} of {len(names)} listed files are missing from {folder} (first: "
                        f"{missing[0]}); {fix}")


def train_count(factory: Callable, options: dict[str, Any], sizes: dict[str, int], published: bool,
                where: str) -> int:
    """The training split's size from the image count per split (in the reader's order), by the reader's split rule
    (``published``: the splits are the dataset's own, else one set cut by fractions); the reader's empty checks."""
    rows: dict[str, list[int]] = {}
    total = 0
    for split, n in sizes.items():
        rows[split], total = list(range(total, total + n)), total + n
    if not total:
        raise DataError(f"{where}: no annotated images found; check task.options.path and its layout")
    splits = assign_splits(rows if published else None, total, *(option(factory, options, k) for k in
                                                                 ("val_fraction", "test_fraction", "seed")))
    empty = next((s for s, index in splits.items() if not len(index)), None)
    if empty is not None:
        raise DataError(f"{where}: the {empty} split is empty; add images or change val_fraction / test_fraction")
    return len(splits["train"])
