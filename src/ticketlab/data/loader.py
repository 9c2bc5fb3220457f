"""The streaming data pipeline: map-style datasets over a task's splits and a ``DataLoader`` per epoch.

The epoch's order is the seeded permutation the training loop draws (so a run reads exactly the samples it
read before this pipeline existed); each global batch is split evenly across ranks; a resumed epoch starts
at its checkpointed batch. Workers decode in parallel (each builds whole batches through ``__getitems__``)
and batches are pinned when the device is a GPU. :class:`LazyImages` holds images that are decoded file by
file (an image folder) or row by row (a memory-mapped Hugging Face dataset), so nothing needs to fit in RAM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ticketlab.data.base import Split, images_to_tensor
from ticketlab.errors import ConfigError, DataError, TicketlabError


class LazyImages:
    """Images ``[N, 3, S, S]`` in [-1, 1], decoded only when indexed; ``subset`` selects without decoding."""

    def __init__(self, load: Callable[[int], Any], rows: np.ndarray, image_size: int, where: str) -> None:
        self.load, self.rows, self.image_size, self.where = load, rows, image_size, where

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), 3, self.image_size, self.image_size)

    def subset(self, index: Any) -> LazyImages:
        return LazyImages(self.load, self.rows[np.asarray(index)], self.image_size, self.where)

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows = self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index)]
        return images_to_tensor(np.stack([self._decode(int(r)) for r in np.atleast_1d(rows)]), self.image_size)

    def _decode(self, row: int) -> np.ndarray:
        try:
            image = self.load(row)
            if hasattr(image, "convert"):
                image = image.convert("RGB").resize((self.image_size, self.image_size))
            return np.asarray(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{self.where}: sample {row} is not a readable image ({type(exc).__name__}); "
                            "remove or replace it") from exc


class FileImage:
    """Open file ``i`` of a list (picklable, for worker processes)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, row: int) -> Any:
        from PIL import Image

        with Image.open(self.files[row]) as image:
            image.load()
            return image.copy()


class RowImage:
    """Column ``column`` of row ``i`` of a memory-mapped Hugging Face dataset (only that row is decoded)."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __call__(self, row: int) -> Any:
        return self.dataset[row][self.column]


class SplitDataset(Dataset):
    """A split as a map-style dataset; ``__getitems__`` returns one whole batch (inputs, labels)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, torch.Tensor]]:
        index = torch.as_tensor(indices)
        return [(self.split.inputs(index), self.split.y[index])]


class EpochBatches(Sampler[list[int]]):
    """This rank's share of every global batch of one epoch's order, from batch ``start`` on."""

    def __init__(self, order: torch.Tensor, batch_size: int, rank: int, world: int, start: int = 0) -> None:
        self.order, self.batch_size, self.rank, self.world, self.start = order, batch_size, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        for b, begin in enumerate(range(0, len(self.order), self.batch_size)):
            batch = self.order[begin : begin + self.batch_size]
            if b >= self.start and len(batch) >= self.world:  # a last batch too small for every rank is dropped
                yield torch.tensor_split(batch, self.world)[self.rank].tolist()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _first(batch: list[Any]) -> Any:
    return batch[0]


def epoch_loader(split: Split, order: torch.Tensor, batch_size: int, rank: int, world: int, start: int,
                 workers: int, pin: bool) -> Iterator[tuple[Any, torch.Tensor]]:
    """The batches of one epoch (resumed at batch ``start``), decoded by ``workers`` processes."""
    loader = DataLoader(SplitDataset(split), batch_sampler=EpochBatches(order, batch_size, rank, world, start),
                        collate_fn=_first, num_workers=workers, pin_memory=pin)
    try:
        yield from loader
    except TicketlabError as exc:  # re-raised from a worker with its traceback: keep the one-line message
        last = str(exc).strip().splitlines()[-1]
        raise type(exc)(last.split(": ", 1)[-1]) from None


def free_bytes(device: torch.device) -> int:
    """Free memory where the data would go: the accelerator's, or the machine's available RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def on_device(split: Split, device: torch.device) -> Split:
    """``engine.data_on_device``: the split's tensors moved once to ``device``, so that a round on an accelerator
    is not bounded by the loader (batches are indexed there; augmentation already runs batched on the device).
    Refused, with the size and the free memory, when it would not fit (more than 80 % of what is free)."""
    tensors = [*split.input_tensors().values(), split.y, *([split.patches] if split.patches is not None else [])]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise ConfigError("engine.data_on_device needs a dataset held in memory as tensors; this one decodes files "
                          "per batch — turn engine.data_on_device off")
    size, free = sum(t.numel() * t.element_size() for t in tensors), free_bytes(device)
    if size > 0.8 * free:
        raise ConfigError(f"engine.data_on_device: the training split needs {size / 2**30:.2f} GiB but {device} has "
                          f"{free / 2**30:.2f} GiB free; turn engine.data_on_device off")
    x = {k: v.to(device) for k, v in split.x.items()} if isinstance(split.x, dict) else split.x.to(device)
    return Split(x, split.y.to(device), None if split.patches is None else split.patches.to(device))


def device_batches(split: Split, order: torch.Tensor, batch_size: int, rank: int, world: int,
                   start: int) -> Iterator[tuple[Any, torch.Tensor]]:
    """The same batches as :func:`epoch_loader`, indexed in a split already on the device."""
    for indices in EpochBatches(order, batch_size, rank, world, start):
        index = torch.as_tensor(indices, device=split.y.device)
        yield split.inputs(index), split.y[index]
