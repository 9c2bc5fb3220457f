"""2:4 tickets on a GPU: the linear layers of a 2:4 ticket with PyTorch's semi-structured sparse kernels
(``torch.sparse.to_sparse_semi_structured``) vs the same layers dense, side by side in one run.

The mask comes from ticketlab's own ``nm_2_4_magnitude`` method; outputs are compared before timing.
Needs a CUDA GPU with sparse tensor cores (Ampere or newer); on CPU it says so and exits.

    python benchmarks/nm_speed.py [--batch 8192] [--width 4096]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from ticketlab.masks import Mask
from ticketlab.pruning import prune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: 2:4 kernels need a GPU (the 2:4 pattern itself is tested on CPU)")
        return
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT  # cuSPARSELt: the kernels Hopper runs

    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp16, x [{args.batch}, {args.width}]")
    print(f"{'layer (out x in)':<18} {'dense ms':>9} {'2:4 ms':>8} {'speed-up':>9} {'max |Δ|':>9}")
    for out_features, in_features in ((args.width, args.width), (2 * args.width, 2 * args.width),
                                      (4 * args.width, args.width), (args.width, 4 * args.width)):
        weight = torch.randn(out_features, in_features)
        ones = Mask({"w": torch.ones_like(weight, dtype=torch.bool)})
        mask = prune("nm_2_4_magnitude", {"w": weight}, ones, 0.5)
        dense = (weight * mask.tensors["w"]).half().cuda()
        sparse = SparseSemiStructuredTensorCUSPARSELT.from_dense(dense)
        x = torch.randn(args.batch, in_features, dtype=torch.half, device="cuda")
        torch.nn.functional.linear(x, sparse)  # warm-up: cuSPARSELt picks its algorithm on the first call
        diff = (torch.nn.functional.linear(x, dense) - torch.nn.functional.linear(x, sparse)).abs().max().item()
        times = {}
        for label, w in (("dense", dense), ("sparse", sparse)):
            timer = benchmark.Timer("torch.nn.functional.linear(x, w)", globals={"x": x, "w": w, "torch": torch})
            times[label] = timer.blocked_autorange(min_run_time=1.0).median * 1000
        print(f"{out_features:>7} x {in_features:<8} {times['dense']:>9.3f} {times['sparse']:>8.3f} "
              f"{times['dense'] / times['sparse']:>8.2f}× {diff:>9.2e}")


if __name__ == "__main__":
    main()
