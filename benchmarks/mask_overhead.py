"""Cost of keeping pruned weights at zero during training, measured side by side in one run.

For a small ViT and a small ResNet, times one training step of ticketlab's real loop (``train.TrainStep``:
objective loss, finite check, gradient masking, clipping, SGD step, LR schedule, re-masking, after_step)
in three variants, interleaved so that machine noise hits all of them alike:
  dense   — the trainer's step without a mask
  masked  — the trainer's step with the mask (mask gradients, re-mask weights after the step)
  hooks   — the trainer's step without ticketlab's mask, pruned by torch.nn.utils.prune.custom_from_mask
            (weight = weight_orig * mask in a forward pre-hook)
and prints the median masked/dense and hooks/dense ratios.

    python benchmarks/mask_overhead.py [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils import prune as torch_prune

from ticketlab.config import TrainConfig
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.step import TrainStep

RECIPE = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, grad_clip=5.0, lr_schedule="cosine")

MODELS = {
    "vit-small (6x192, 64 tokens)": ("vit", {"config": {"hidden_size": 192, "num_hidden_layers": 6,
                                                        "num_attention_heads": 3, "intermediate_size": 768,
                                                        "image_size": 32, "patch_size": 4}}, 32),
    "resnet20 (width 16)": ("resnet20", {"width": 16}, 64),
}


def make_variant(kind: str, name: str, options: dict, sparsity: float, steps: int) -> TrainStep:
    model = build_model(name, 10, options, seed=0)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("global_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), sparsity)
    if kind == "hooks":
        modules = dict(model.named_modules())
        for n in names:
            torch_prune.custom_from_mask(modules[n.removesuffix(".weight")], "weight", mask.tensors[n])
    model.train()
    return TrainStep(model, RECIPE, total_steps=steps + 5, mask=mask if kind == "masked" else None)


def measure(name: str, options: dict, batch: int, steps: int, sparsity: float) -> dict[str, float]:
    variants = {k: make_variant(k, name, options, sparsity, steps) for k in ("dense", "masked", "hooks")}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for i in range(steps + 5):
        order = order[1:] + order[:1]  # rotate so no variant always runs first
        for kind in order:
            start = time.perf_counter()
            variants[kind](x, y)
            if i >= 5:  # warm-up
                times[kind].append(time.perf_counter() - start)
    dense = statistics.median(times["dense"])
    return {"dense_ms": 1000 * dense, "masked/dense": statistics.median(times["masked"]) / dense,
            "hooks/dense": statistics.median(times["hooks"]) / dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sparsity {args.sparsity:.0%}, "
          f"{args.steps} interleaved steps per variant, median ratios")
    print(f"{'model':<30} {'dense step':>11} {'masked/dense':>13} {'hooks/dense':>12}")
    for label, (name, options, batch) in MODELS.items():
        r = measure(name, options, batch, args.steps, args.sparsity)
        print(f"{label:<30} {r['dense_ms']:>9.1f}ms {r['masked/dense']:>13.3f} {r['hooks/dense']:>12.3f}")


if __name__ == "__main__":
    main()
