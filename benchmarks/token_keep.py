"""Throughput of a ViT student at keep rates 1.0 / 0.9 / 0.7 / 0.5 / 0.3, measured side by side in one run.

At keep rate k the model sees ⌈k·N⌉ patches (dropped from the sequence, not masked), so the ideal
speedup over k = 1 is 1/k (more for the quadratic attention part). Prints training-step and
inference throughput as speedup over k = 1.0 next to 1/k and the ratio to it (goal ≥ 0.85).

    python benchmarks/token_keep.py [--steps 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ticketlab.models import build_model
from ticketlab.patches.tokens import keep_count
from ticketlab.patches.vit import patch_vit

CONFIG = {"hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3, "intermediate_size": 768,
          "image_size": 64, "patch_size": 4}  # 256 patches
KEEP_RATES = (1.0, 0.9, 0.7, 0.5, 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    model = build_model("vit", 10, {"config": CONFIG}, seed=0)
    patch_vit(model.backbone)  # patch-subset inputs (x, kept patch indices): what a student trains on
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = (CONFIG["image_size"] // CONFIG["patch_size"]) ** 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, CONFIG["image_size"], CONFIG["image_size"], generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    patches = {k: torch.rand(args.batch, n, generator=gen).topk(keep_count(n, k), dim=1).indices.sort(1).values
               for k in KEEP_RATES}
    times: dict[str, dict[float, list[float]]] = {"train": {k: [] for k in KEEP_RATES},
                                                   "infer": {k: [] for k in KEEP_RATES}}

    def train_step(k: float) -> None:
        loss = F.cross_entropy(model((x, patches[k])), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step(k: float) -> None:
        model((x, patches[k]))

    for i in range(args.steps + 2):
        order = KEEP_RATES[i % len(KEEP_RATES):] + KEEP_RATES[: i % len(KEEP_RATES)]  # rotate against drift
        for mode, fn in (("train", train_step), ("infer", infer_step)):
            model.train(mode == "train")
            for k in order:
                start = time.perf_counter()
                fn(k)
                if i >= 2:
                    times[mode][k].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ViT 6x192, {n} patches, batch {args.batch}, "
          f"median of {args.steps} interleaved steps")
    print(f"{'keep':>5} {'patches':>8} {'ideal 1/k':>10} {'train speedup':>14} {'/ideal':>7} "
          f"{'infer speedup':>14} {'/ideal':>7}")
    base = {m: statistics.median(times[m][1.0]) for m in times}
    for k in KEEP_RATES:
        sp = {m: base[m] / statistics.median(times[m][k]) for m in times}
        print(f"{k:>5} {keep_count(n, k):>8} {1 / k:>10.2f} {sp['train']:>14.2f} {sp['train'] * k:>7.2f} "
              f"{sp['infer']:>14.2f} {sp['infer'] * k:>7.2f}")
    print(f"k=1.0 throughput: train {args.batch / base['train']:.1f} img/s, infer {args.batch / base['infer']:.1f} img/s")


if __name__ == "__main__":
    main()
