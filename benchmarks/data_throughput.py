"""Does the data pipeline keep up with training? Side by side in one run, on an image folder of 32-px PNGs:
samples/s the loader delivers (0 and 2 worker processes, decoding file by file) vs samples/s the model
consumes (ticketlab's real training step, ResNet-20, on pre-decoded batches). The loader must not be the
bottleneck: its rate should exceed the model's.

    python benchmarks/data_throughput.py [--images 3000] [--batch 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ticketlab.config import EngineConfig, TrainConfig
from ticketlab.data import build_task
from ticketlab.data.loader import epoch_loader
from ticketlab.engine import Engine
from ticketlab.models import build_model
from ticketlab.step import TrainStep


def write_folder(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def loader_rate(split, batch: int, workers: int) -> float:  # noqa: ANN001
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    started, seen = time.perf_counter(), 0
    for _, labels in epoch_loader(split, order, batch, 0, 1, 0, workers, False):
        seen += len(labels)
    return seen / (time.perf_counter() - started)


def model_rate(batch: int, steps: int) -> float:
    model = build_model("resnet20", 10, {"width": 16}, seed=0)
    step = TrainStep(model, TrainConfig(lr=0.05), steps + 2, engine=Engine(EngineConfig()))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    step(x, y)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    step.flush()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), args.images)
        task = build_task("image_folder", {"path": tmp, "val_fraction": 0.01, "test_fraction": 0.01})
        rates = {f"loader, {w} workers": loader_rate(task.train, args.batch, w) for w in (0, 2)}
    consume = model_rate(args.batch, 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} PNGs of 32 px, "
          f"batch {args.batch}")
    for label, rate in rates.items():
        print(f"{label:<20} {rate:>9.0f} samples/s   loader/model = {rate / consume:.2f}")
    print(f"{'model (ResNet-20)':<20} {consume:>9.0f} samples/s   (training step, width 16)")


if __name__ == "__main__":
    main()
