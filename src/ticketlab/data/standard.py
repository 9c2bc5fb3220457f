"""Image datasets in their published on-disk formats, read without unpickling and streamed row by row.

- ``cifar10`` / ``cifar100``: the *binary* versions (``cifar-10-batches-bin``: ``data_batch_{1..5}.bin``,
  ``test_batch.bin``; ``cifar-100-binary``: ``train.bin``, ``test.bin``) — records are memory-mapped.
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB v5, read by scipy; loaded whole — 0.2 GB).
- ``mnist`` / ``fashion_mnist``: IDX files (``train-images-idx3-ubyte[.gz]`` ...); plain files are memory-mapped,
  gzipped ones decompressed once in memory.

The official test split is the test split; validation is a seeded ``val_fraction`` of the training split, so
no choice is ever made on test data.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ticketlab.data.base import SMOKE_WRITERS, TASKS, Split, Task, dry_run_hooks, split_indices, with_official_test
from ticketlab.data.loader import LazyImages
from ticketlab.data.smoke_files import N_TEST, N_TRAIN, cifar_records, idx_file, smoke_labels, smoke_rng
from ticketlab.errors import DataError
from ticketlab.registry import bounds

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
PIXELS = 32 * 32 * 3
CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


class Records:
    """Row ``i`` of fixed-size records in files (a memory map opened on first use, so workers can pickle it)."""

    def __init__(self, files: list[Path], header: int, record: int, label_bytes: int, shape: tuple[int, ...],
                 channels_first: bool) -> None:
        self.files, self.header, self.record, self.label_bytes = files, header, record, label_bytes
        self.shape, self.channels_first = shape, channels_first
        self.counts = [(f.stat().st_size - header) // record for f in files]
        self._maps: list[np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.memmap(f, np.uint8, "r", offset=self.header, shape=(n, self.record))
                          for f, n in zip(self.files, self.counts, strict=True)]
        return self._maps

    def row(self, i: int) -> np.ndarray:
        for records in self.maps():
            if i < len(records):
                return records[i]
            i -= len(records)
        raise IndexError(i)

    def __call__(self, i: int) -> np.ndarray:
        pixels = np.asarray(self.row(i)[self.label_bytes:]).reshape(self.shape)
        return pixels.transpose(1, 2, 0) if self.channels_first else pixels

    def labels(self, which: int) -> np.ndarray:
        return np.concatenate([m[:, which] for m in self.maps()]).astype(np.int64)


class InMemory:
    """Row ``i`` of an array already in memory (a ``.mat`` file, a gzipped IDX file)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, i: int) -> np.ndarray:
        return self.images[i]


def _need(root: Path, names: list[str], what: str) -> list[Path]:
    files = [root / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{root} lacks {', '.join(missing)} ({what}); point task.options.path at that folder")
    return files


def _records(files: list[Path], record: int, label_bytes: int) -> Records:
    for f in files:
        if f.stat().st_size == 0 or f.stat().st_size % record:
            raise DataError(f"{f} is truncated or not a CIFAR binary file ({f.stat().st_size} bytes is not a multiple "
                            f"of the {record}-byte record); download it again (the binary version)")
    return Records(files, 0, record, label_bytes, (3, 32, 32), channels_first=True)


def _task(name: str, load_train: Any, y_train: np.ndarray, load_test: Any, y_test: np.ndarray, classes: list[str],
          image_size: int, val_fraction: float, seed: int, where: str) -> Task:
    """Train/val from the training files (seeded cut), test = the official test files."""
    train = LazyImages(load_train, np.arange(len(y_train)), image_size, where)
    test = Split(LazyImages(load_test, np.arange(len(y_test)), image_size, where), torch.as_tensor(y_test))
    return with_official_test(name, train, torch.as_tensor(y_train), test, classes, val_fraction, seed)


def _class_names(file: Path, count: int) -> list[str]:
    names = [n.strip() for n in file.read_text(encoding="utf-8").splitlines() if n.strip()] if file.is_file() else []
    return names if len(names) == count else [str(i) for i in range(count)]


@TASKS.register("cifar10")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5))
def cifar10(path: str, image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Task:
    """CIFAR-10, binary version: the folder with ``data_batch_1.bin`` ... ``test_batch.bin``."""
    root = Path(path).expanduser()
    train = _records(_need(root, CIFAR10_TRAIN, "CIFAR-10 binary"), PIXELS + 1, 1)
    test = _records(_need(root, ["test_batch.bin"], "CIFAR-10 binary"), PIXELS + 1, 1)
    return _task("cifar10", train, train.labels(0), test, test.labels(0), CIFAR10_CLASSES, image_size, val_fraction,
                 seed, str(root))


@TASKS.register("cifar100")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5))
def cifar100(path: str, label: str = "fine", image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Task:
    """CIFAR-100, binary version (``train.bin``, ``test.bin``); ``label``: fine (100 classes) or coarse (20)."""
    if label not in ("fine", "coarse"):
        raise DataError(f"task.options.label must be fine or coarse, got {label!r}")
    root = Path(path).expanduser()
    train = _records(_need(root, ["train.bin"], "CIFAR-100 binary"), PIXELS + 2, 2)
    test = _records(_need(root, ["test.bin"], "CIFAR-100 binary"), PIXELS + 2, 2)
    which, count = (1, 100) if label == "fine" else (0, 20)
    names = _class_names(root / f"{label}_label_names.txt", count)
    return _task(f"cifar100_{label}", train, train.labels(which), test, test.labels(which), names, image_size,
                 val_fraction, seed, str(root))


def _read_mat(file: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        data = loadmat(str(file), variable_names=["X", "y"])
    except (ValueError, OSError, TypeError, EOFError) as exc:
        raise DataError(f"{file} is truncated or not a MATLAB .mat file ({type(exc).__name__}); download it again")\
            from exc
    if "X" not in data or "y" not in data or data["X"].ndim != 4:
        raise DataError(f"{file} lacks SVHN's X [32, 32, 3, N] and y [N, 1] arrays; use the cropped-digits files")
    images = np.ascontiguousarray(data["X"].transpose(3, 0, 1, 2))
    labels = data["y"].reshape(-1).astype(np.int64) % 10  # SVHN stores digit 0 as label 10
    if len(labels) != len(images):
        raise DataError(f"{file}: {len(images)} images but {len(labels)} labels; download it again")
    return images, labels


@TASKS.register("svhn")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5))
def svhn(path: str, image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Task:
    """SVHN cropped digits: the folder with ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 -> digit 0)."""
    root = Path(path).expanduser()
    train_file, test_file = _need(root, ["train_32x32.mat", "test_32x32.mat"], "SVHN cropped digits")
    (x_train, y_train), (x_test, y_test) = _read_mat(train_file), _read_mat(test_file)
    return _task("svhn", InMemory(x_train), y_train, InMemory(x_test), y_test, [str(d) for d in range(10)],
                 image_size, val_fraction, seed, str(root))


def _idx(file: Path, ndim: int) -> Any:
    """An IDX array of unsigned bytes: memory-mapped when plain, decompressed once when gzipped."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else None
    except (OSError, EOFError) as exc:
        raise DataError(f"{file} is a truncated or corrupt gzip file; download it again") from exc
    head = raw[: 4 + 4 * ndim] if raw is not None else file.open("rb").read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise DataError(f"{file} is not an IDX file of {ndim}-d unsigned bytes (bad magic number)")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = (len(raw) if raw is not None else file.stat().st_size) - len(head)
    if size != int(np.prod(dims)):
        raise DataError(f"{file} is truncated ({size} bytes of data, its header promises {int(np.prod(dims))}); "
                        "download it again")
    if raw is not None:
        return np.frombuffer(raw, np.uint8, offset=len(head)).reshape(dims)
    return np.memmap(file, np.uint8, "r", offset=len(head), shape=tuple(dims))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} lacks {stem}[.gz] (an IDX file); point task.options.path at the folder holding it")


def _idx_task(name: str, path: str, classes: list[str], image_size: int, val_fraction: float, seed: int) -> Task:
    root = Path(path).expanduser()
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"), 3)
        labels = np.asarray(_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"), 1)).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels; download it again")
        arrays[split] = (InMemory(images), labels)
    return _task(name, *arrays["train"], *arrays["test"], classes, image_size, val_fraction, seed, str(root))


@TASKS.register("mnist")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5))
def mnist(path: str, image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Task:
    """MNIST in IDX files (gzipped or not); greyscale is repeated to 3 channels."""
    return _idx_task("mnist", path, [str(d) for d in range(10)], image_size, val_fraction, seed)


@TASKS.register("fashion_mnist")
@bounds(image_size=(1, 4096), val_fraction=(0.01, 0.5))
def fashion_mnist(path: str, image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Task:
    """Fashion-MNIST in IDX files (gzipped or not), the layout MNIST uses."""
    return _idx_task("fashion_mnist", path, FASHION_CLASSES, image_size, val_fraction, seed)


# -- --smoke stand-ins in each format ---------------------------------------------------------------------
@SMOKE_WRITERS.register("cifar10")
def smoke_cifar10(options: dict[str, Any], root: Path) -> str:
    cifar_records(root, {**{f"data_batch_{i}.bin": N_TRAIN // 5 for i in range(1, 6)}, "test_batch.bin": N_TEST}, 1, 10)
    return str(root)


@SMOKE_WRITERS.register("cifar100")
def smoke_cifar100(options: dict[str, Any], root: Path) -> str:
    cifar_records(root, {"train.bin": N_TRAIN * 3, "test.bin": N_TEST}, 2, 20)
    return str(root)


@SMOKE_WRITERS.register("svhn")
def smoke_svhn(options: dict[str, Any], root: Path) -> str:
    from scipy.io import savemat

    rng = smoke_rng("svhn")
    for file, n in (("train_32x32.mat", N_TRAIN), ("test_32x32.mat", N_TEST)):
        savemat(str(root / file), {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                   "y": (smoke_labels(n, 10, rng).astype(np.int64) + 1)[:, None]})
    return str(root)


@SMOKE_WRITERS.register("mnist")
@SMOKE_WRITERS.register("fashion_mnist")
def smoke_idx(options: dict[str, Any], root: Path) -> str:
    rng = smoke_rng(root.name)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        idx_file(root, f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        idx_file(root, f"{prefix}-labels-idx1-ubyte", smoke_labels(n, 10, rng))
    return str(root)


# -- --dry-run probes (``dry_run_hooks``): presence and format from file sizes and headers, no pixel read ------------
def _train_share(n: int, options: dict[str, Any]) -> int:
    return len(split_indices(n, options.get("val_fraction", 0.1), 0.0, 0)[0])


def _cifar_probe(train: list[str], test: list[str], record: int, what: str) -> Any:
    def probe(options: dict[str, Any]) -> int:
        root = Path(options["path"]).expanduser()
        _records(_need(root, test, what), record, 1)
        return _train_share(sum(_records(_need(root, train, what), record, 1).counts), options)

    return probe


def _svhn_probe(options: dict[str, Any]) -> int:
    from scipy.io import whosmat

    counts = []
    for file in _need(Path(options["path"]).expanduser(), ["train_32x32.mat", "test_32x32.mat"], "SVHN cropped digits"):
        try:
            shapes = {name: shape for name, shape, _ in whosmat(str(file))}
        except (ValueError, OSError, TypeError, EOFError) as exc:
            raise DataError(f"{file} is truncated or not a MATLAB .mat file ({type(exc).__name__}); download it "
                            "again") from exc
        if len(shapes.get("X", ())) != 4 or "y" not in shapes:
            raise DataError(f"{file} lacks SVHN's X [32, 32, 3, N] and y [N, 1] arrays; use the cropped-digits files")
        counts.append(shapes["X"][3])
    return _train_share(counts[0], options)


def _idx_probe(options: dict[str, Any]) -> int:
    root = Path(options["path"]).expanduser()
    counts = [len(_idx(_find_idx(root, f"{prefix}-{kind}-idx{ndim}-ubyte"), ndim))
              for prefix in ("train", "t10k") for kind, ndim in (("images", 3), ("labels", 1))]
    return _train_share(counts[0], options)


dry_run_hooks(_cifar_probe(CIFAR10_TRAIN, ["test_batch.bin"], PIXELS + 1, "CIFAR-10 binary"))(cifar10)
dry_run_hooks(_cifar_probe(["train.bin"], ["test.bin"], PIXELS + 2, "CIFAR-100 binary"))(cifar100)
dry_run_hooks(_svhn_probe)(svhn)
dry_run_hooks(_idx_probe)(mnist)
dry_run_hooks(_idx_probe)(fashion_mnist)
