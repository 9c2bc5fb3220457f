"""Channel tickets pay off on any hardware: a ResNet's channel ticket, physically slimmed (``ticketlab.surgery``),
vs the dense model, side by side in one run on CPU — FLOPs and latency at batch 32 (median, interleaved).

    python benchmarks/structured_speed.py [--width 64] [--sparsity 0.85] [--size 32] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ticketlab.bench import flops
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.surgery import slim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.85)  # about half the FLOPs
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=32, help="image size")
    parser.add_argument("--channels-last", action="store_true", help="both models in channels_last memory format")
    args = parser.parse_args()
    dense = build_model("resnet20", 10, {"width": args.width}, seed=0).eval()
    names = prunable_names(dense)
    params = dict(dense.named_parameters())
    mask = prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(dense, names), args.sparsity)
    small = slim(dense, mask)
    x = torch.randn(32, 3, args.size, args.size)
    if args.channels_last:
        dense, small, x = (t.to(memory_format=torch.channels_last) for t in (dense, small, x))
    with torch.no_grad():
        assert torch.allclose(small(x), mask.apply_(dense)(x), atol=1e-4)
    times: dict[str, list[float]] = {"dense": [], "slim": []}
    with torch.no_grad():
        for i in range(args.steps + 3):
            for label, model in (("dense", dense), ("slim", small)) if i % 2 else (("slim", small), ("dense", dense)):
                start = time.perf_counter()
                model(x)
                if i >= 3:
                    times[label].append(time.perf_counter() - start)
    d, s = statistics.median(times["dense"]), statistics.median(times["slim"])
    fd, fs = flops(dense, x), flops(small, x)
    pd, ps = (sum(p.numel() for p in m.parameters()) for m in (dense, small))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-20 width {args.width}, "
          f"channel ticket at {mask.sparsity():.1%} of the prunable weights, batch 32")
    print(f"dense   params {pd:>9,}  FLOPs {fd:>13,}  {1000 * d:8.2f} ms")
    print(f"slimmed params {ps:>9,}  FLOPs {fs:>13,}  {1000 * s:8.2f} ms   FLOPs ×{fd / fs:.2f} fewer, "
          f"speed-up ×{d / s:.2f}")


if __name__ == "__main__":
    main()
