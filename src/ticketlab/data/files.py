"""Loaders for users' own data: an image-folder tree, ``.npz`` arrays, a Hugging Face dataset on disk."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ticketlab.data.base import (
    SMOKE_WRITERS,
    TASKS,
    Split,
    Task,
    dry_run_hooks,
    images_to_tensor,
    label_names,
    split_indices,
    task_from_arrays,
    with_official_test,
)
from ticketlab.data.loader import FileImage, LazyImages, RowImage
from ticketlab.data.smoke_files import smoke_rng
from ticketlab.errors import DataError
from ticketlab.registry import bounds

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _existing(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist; check task.options.path")
    return root


def _read_folder(root: Path, classes: list[str], image_size: int) -> tuple[LazyImages, torch.Tensor]:
    """The folder's images, decoded file by file when used (only headers are read here, to fail early)."""
    from PIL import Image

    files, labels = [], []
    for label, cls in enumerate(classes):
        count = len(files)
        for file in sorted((root / cls).iterdir()) if (root / cls).is_dir() else []:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(file):
                        pass  # the header only: a file that is not an image fails now, before any run folder exists
                except (OSError, ValueError) as exc:
                    raise DataError(f"{file} is not a readable image ({type(exc).__name__}); remove or replace it") \
                        from exc
                files.append(file)
                labels.append(label)
        if len(files) == count:
            raise DataError(f"class folder {root / cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                            "images or remove the folder")
    if not files:
        raise DataError(f"no images found under {root} (expected {root}/<class>/<image>.png)")
    return LazyImages(FileImage(files), np.arange(len(files)), image_size, str(root)), torch.tensor(labels)


@TASKS.register("image_folder")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def image_folder(path: str, image_size: int = 32, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> Task:
    """``path/<class>/*.png``; ``path/{train,val,test}/<class>/``; or ImageNet's / VisDA's ``path/train`` +
    ``path/val`` (or ``validation``): then validation is cut from train and the published val split is the test."""
    root = _existing(path)
    if (root / "train").is_dir():
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        held_out = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
        if held_out is not None and not (root / "test").is_dir():  # ImageNet / VisDA: val is the evaluation split
            x, y = _read_folder(root / "train", classes, image_size)
            test = Split(*_read_folder(held_out, classes, image_size))
            return with_official_test(root.name, x, y, test, classes, val_fraction, seed)
        if held_out is None or not (root / "test").is_dir():
            raise DataError(f"{root} has a train/ folder but not val/ (or validation/); add it")
        splits = {s: Split(*_read_folder(d, classes, image_size)) for s, d in
                  (("train", root / "train"), ("val", held_out), ("test", root / "test"))}
        return Task(root.name, len(classes), **splits, class_names=classes)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    x, y = _read_folder(root, classes, image_size)
    return task_from_arrays(root.name, x, y, len(classes), val_fraction, test_fraction, seed, classes)


def _labels(array: np.ndarray, where: str, names: list[str] | None = None) -> torch.Tensor:
    """Integer labels; string labels are mapped to ids in sorted order, the mapping appended to ``names``."""
    if array.dtype.kind in ("U", "S", "O"):
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in array.tolist()]
        if names is not None and not names:
            names.extend(label_names(values))
        mapping = {n: i for i, n in enumerate(names or label_names(values))}
        unknown = sorted(set(values) - set(mapping))
        if unknown:
            raise DataError(f"{where}: labels {unknown[:3]} do not occur in the other splits; fix the labels")
        return torch.as_tensor([mapping[v] for v in values], dtype=torch.long)
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise DataError(f"{where}: labels must be integers, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64))


@TASKS.register("npz")
@bounds(num_classes=(2, None), image_size=(1, 4096), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def npz(path: str, image_size: int | None = None, num_classes: int | None = None, val_fraction: float = 0.1,
        test_fraction: float = 0.2, seed: int = 0) -> Task:
    """Arrays ``x``/``y`` (split here) or ``x_train``/``y_train``/``x_val``/... in one ``.npz`` file."""
    root = _existing(path)
    if not zipfile.is_zipfile(root):
        raise DataError(f"{root} is not a readable .npz file (not a zip archive); re-create it with np.savez")
    try:
        with np.load(root, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        raise DataError(f"{root} holds object arrays (pickled Python objects), which ticketlab never loads; save "
                        "plain numeric arrays with np.savez") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{root} is not a readable .npz file ({type(exc).__name__}); re-create it with np.savez") \
            from exc
    if not isinstance(arrays, dict):
        raise DataError(f"{root} is a single array, not an .npz archive; save x and y with np.savez")
    if "x_train" in arrays:
        names = [s for s in ("train", "val", "test") if f"x_{s}" in arrays]
        if names != ["train", "val", "test"]:
            raise DataError(f"{root}: has x_train but not all of x_val and x_test; add them or use x/y")
        classes: list[str] = label_names(v for s in names for v in arrays[f"y_{s}"].tolist()) \
            if arrays["y_train"].dtype.kind in ("U", "S") else []
        splits = {s: Split(images_to_tensor(arrays[f"x_{s}"], image_size),
                           _labels(arrays[f"y_{s}"], f"{root}:y_{s}", classes)) for s in names}
        k = num_classes or int(max(int(s.y.max()) for s in splits.values() if len(s)) + 1)
        return Task(root.stem, len(classes) or k, **splits, class_names=classes)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{root}: expected arrays 'x' and 'y' (or x_train/y_train/...), found {sorted(arrays)}")
    classes: list[str] = []
    y = _labels(arrays["y"], f"{root}:y", classes)
    k = len(classes) or num_classes or (int(y.max()) + 1 if len(y) else 0)
    return task_from_arrays(root.stem, images_to_tensor(arrays["x"], image_size), y, k, val_fraction,
                            test_fraction, seed, classes)


@TASKS.register("hf_disk")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5), test_fraction=(0.01, 0.5))
def hf_disk(path: str, image_column: str = "image", label_column: str = "label", image_size: int = 32,
            val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Task:
    """A dataset written by ``datasets``' ``save_to_disk`` (a Dataset, or a DatasetDict with train/val/test)."""
    root = _existing(path)
    try:
        from datasets import Dataset, load_from_disk
    except ImportError as exc:
        raise DataError("reading Hugging Face datasets needs: pip install 'ticketlab[hf-datasets]'") from exc
    try:
        data = load_from_disk(str(root))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{root} is not a dataset saved with datasets' save_to_disk ({str(exc)[:120]}); "
                        "check task.options.path") from exc

    def arrays(ds: Dataset) -> tuple[LazyImages, torch.Tensor]:
        """The images stay in the memory-mapped dataset and are decoded row by row; labels are read now."""
        for column in (image_column, label_column):
            if column not in ds.column_names:
                raise DataError(f"{root}: no column {column!r}; columns are {ds.column_names}")
        if len(ds) == 0:
            raise DataError(f"{root}: the dataset is empty")
        images = LazyImages(RowImage(ds, image_column), np.arange(len(ds)), image_size, str(root))
        return images, _labels(np.asarray(ds[label_column]), str(root))

    if isinstance(data, Dataset):
        x, y = arrays(data)
        return task_from_arrays(root.name, x, y, int(y.max()) + 1, val_fraction, test_fraction, seed)
    val_key = "validation" if "validation" in data else "val"
    if not {"train", val_key, "test"} <= set(data):
        raise DataError(f"{root}: a DatasetDict needs train, validation (or val) and test splits, has {list(data)}")
    splits = {s: Split(*arrays(data[k])) for s, k in (("train", "train"), ("val", val_key), ("test", "test"))}
    return Task(root.name, int(max(int(s.y.max()) for s in splits.values())) + 1, **splits)


@SMOKE_WRITERS.register("image_folder")
def smoke_image_folder(options: dict[str, object], root: Path) -> str:
    """ImageNet's layout in miniature: ``train/<wnid>/`` and ``val/<wnid>/`` PNGs of random pixels."""
    from PIL import Image

    rng = smoke_rng("image_folder")
    for split, n in (("train", 12), ("val", 4)):
        for cls in ("n01440764", "n01443537"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return str(root)


# -- --dry-run probe (``dry_run_hooks``): the layout, image counts from file names, one image header per split ------
def _probe_folder(folder: Path, classes: list[str] | None = None) -> int:
    from PIL import Image

    classes = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{folder} holds no class folders (expected {folder}/<class>/<image>.png); point "
                        "task.options.path at the dataset's root")
    total = 0
    for cls in classes:
        files = [f.name for f in (folder / cls).iterdir()] if (folder / cls).is_dir() else []
        count = sum(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files)
        if count == 0:
            raise DataError(f"class folder {folder / cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                            "images or remove the folder")
        total += count
    first = folder / classes[0] / min(f.name for f in (folder / classes[0]).iterdir()
                                      if f.suffix.lower() in IMAGE_SUFFIXES)
    try:
        with Image.open(first):
            pass
    except (OSError, ValueError) as exc:
        raise DataError(f"{first} is not a readable image ({type(exc).__name__}); remove or replace it") from exc
    return total


def _image_folder_probe(options: dict[str, object]) -> int:
    root = _existing(str(options["path"]))
    val, test = float(options.get("val_fraction", 0.1)), float(options.get("test_fraction", 0.2))
    if not (root / "train").is_dir():
        return len(split_indices(_probe_folder(root), val, test, 0)[0])
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    held_out = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if held_out is None:
        raise DataError(f"{root} has a train/ folder but not val/ (or validation/); add it")
    n = _probe_folder(root / "train", classes)
    for folder in [held_out, *([root / "test"] if (root / "test").is_dir() else [])]:
        _probe_folder(folder, classes)
    return n if (root / "test").is_dir() else len(split_indices(n, val, 0.0, 0)[0])


dry_run_hooks(_image_folder_probe)(image_folder)
