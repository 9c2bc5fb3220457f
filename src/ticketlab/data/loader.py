"""The streaming data pipeline: map-style datasets over a task's splits and a ``DataLoader`` per epoch.

The epoch's order is the seeded permutation the training loop draws (so a run reads exactly the samples it
read before this pipeline existed); each global batch is split evenly across ranks; a resumed epoch starts
at its checkpointed batch. Workers decode in parallel (each builds whole batches through ``__getitems__``)
and batches are pinned when the device is a GPU. :class:`LazyImages` holds images that are decoded file by
file (an image folder) or row by row (a memory-mapped Hugging Face dataset), so nothing needs to fit in RAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ticketlab.data.base import Split, images_to_tensor
from ticketlab.errors import DataError, TicketlabError


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
