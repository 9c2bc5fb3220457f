"""Primitives for the tiny stand-in files ``--smoke`` writes in each dataset's real format (the writers live beside
their readers, registered in ``SMOKE_WRITERS``): seeded bytes, labels covering every class, IDX and CIFAR records."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 40, 16


def smoke_rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def smoke_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in ``0..k-1``, every class present."""
    return np.concatenate([np.arange(k), rng.integers(0, k, max(n - k, 0))])[:n].astype(np.uint8)


def cifar_records(root: Path, files: dict[str, int], label_bytes: int, classes: int) -> None:
    rng = smoke_rng(str(root))
    for file, n in files.items():
        labels = smoke_labels(n, classes, rng)
        records = np.concatenate([np.repeat(labels[:, None], label_bytes, 1),
                                  rng.integers(0, 256, (n, 3072), dtype=np.uint8)], 1)
        (root / file).write_bytes(records.astype(np.uint8).tobytes())


def idx_file(root: Path, stem: str, array: np.ndarray) -> None:
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (root / f"{stem}.gz").write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))
