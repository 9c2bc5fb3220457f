"""ticketlab's real training step vs a plain hand-written PyTorch step, side by side in one run.

For each model, times (median of interleaved steps) the trainer's ``TrainStep`` — through the Accelerate
engine, with an 80 %-sparse mask enforced — against a plain loop on an identical model: forward, loss,
backward, SGD step (same batch, precision and memory format). Prints both and their ratio (goal ≤ 1.05 on
CPU; throughput ratio ≥ 0.95 on a GPU, where blocks of 5 steps are timed so that the GPU queue stays full).

    python benchmarks/engine_overhead.py                                   # CPU: ResNet-20 and a small ViT
    python benchmarks/engine_overhead.py --models resnet50-224 --precision bf16 --channels-last   # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ticketlab.config import EngineConfig, TrainConfig
from ticketlab.engine import Engine
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.step import TrainStep

MODELS = {  # name -> (family, options, batch, image size)
    "resnet20": ("resnet20", {"width": 16}, 64, 32),
    "vit-small": ("vit", {"config": {"hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3,
                                     "intermediate_size": 768, "image_size": 32, "patch_size": 4}}, 32, 32),
    "resnet50-224": ("hf_resnet", {"config": {}}, 64, 224),  # the ImageNet ResNet-50 layout of transformers
}
RECIPE = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_step(model, optimizer, x, y, dtype) -> None:  # noqa: ANN001
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(name: str, engine_cfg: EngineConfig, steps: int, sparsity: float) -> dict[str, float]:
    family, options, batch, size = MODELS[name]
    engine = Engine(engine_cfg)
    device, dtype = engine.device, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        engine.precision]
    ours = build_model(family, 10, options, seed=0)
    names = prunable_names(ours)
    params = dict(ours.named_parameters())
    mask = prune("global_magnitude", {n: params[n] for n in names}, Mask.ones(ours, names), sparsity)
    step = TrainStep(ours, RECIPE, steps + 10, mask=mask, engine=engine)
    plain = build_model(family, 10, options, seed=0).to(device)
    if engine_cfg.channels_last:
        plain.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x_cpu, y_cpu = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    x, y = engine.to_device(x_cpu), y_cpu.to(device)
    times: dict[str, list[float]] = {"ticketlab": [], "plain": []}
    block = 5 if device.type == "cuda" else 1  # on a GPU, time blocks of steps: the queue stays full, as in training
    for i in range(steps // block + 3):
        for kind in (("ticketlab", "plain") if i % 2 else ("plain", "ticketlab")):
            sync(device)
            start = time.perf_counter()
            for _ in range(block):
                step(x, y) if kind == "ticketlab" else plain_step(plain, optimizer, x, y, dtype)
            sync(device)
            if i >= 3:
                times[kind].append((time.perf_counter() - start) / block)
    ours_s, plain_s = statistics.median(times["ticketlab"]), statistics.median(times["plain"])
    return {"batch": batch, "plain_ms": 1000 * plain_s, "ticketlab_ms": 1000 * ours_s, "ratio": ours_s / plain_s,
            "plain_img_s": batch / plain_s, "ticketlab_img_s": batch / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,vit-small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()
    cfg = EngineConfig(precision=args.precision, channels_last=args.channels_last)
    device = Engine(cfg).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.precision}{', channels_last' if args.channels_last else ''}, "
          f"mask {args.sparsity:.0%}, median of {args.steps} interleaved steps")
    print(f"{'model':<14} {'batch':>5} {'plain':>10} {'ticketlab':>10} {'ratio':>7} {'plain img/s':>12} "
          f"{'ours img/s':>11}")
    for name in args.models.split(","):
        r = measure(name, cfg, args.steps, args.sparsity)
        print(f"{name:<14} {r['batch']:>5} {r['plain_ms']:>8.1f}ms {r['ticketlab_ms']:>8.1f}ms {r['ratio']:>7.3f} "
              f"{r['plain_img_s']:>12.1f} {r['ticketlab_img_s']:>11.1f}")


if __name__ == "__main__":
    main()
