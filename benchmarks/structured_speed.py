"""Structured tickets at half the FLOPs vs the dense model and vs Torch-Pruning's own one-shot L1 pruning, timed
side by side in one run (interleaved, medians and IQR, warm-up excluded), at 1 and 2 threads; and, with
``--seeds``, the tickets' test scores beside the dense score with paired 95 % intervals (IMP on scikit-learn's
digits, rewinding to the initialisation, ``--epochs`` a round).

    python benchmarks/structured_speed.py [--models resnet20:16 resnet18:64 vit] [--threads 1 2] [--seeds 3]

Every ticket's slim model is checked against its masked model (outputs within 1e-4) before it is timed.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import ticketlab.plugins  # noqa: F401 - registers the methods
from ticketlab.bench import flops
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import PrunableConfig, prunable_names
from ticketlab.pruning import prune
from ticketlab.surgery import slim
from ticketlab.timing import interleaved

CNN_TICKETS = {  # label -> (method, structure, channel multiple)
    "coupled channels (Torch-Pruning groups)": ("coupled_channel_magnitude", "none", 1),
    "coupled channels, widths ×8": ("coupled_channel_magnitude", "none", 8),
    "refill (layerwise IMP mask)": ("layerwise_magnitude", "channel_refill", 1),
    "refill, widths ×8": ("layerwise_magnitude", "channel_refill", 8),
    "inner channels only (old channel_*)": ("channel_magnitude", "none", 1),
}
VIT = {"config": {"hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3, "intermediate_size": 768,
                  "image_size": 32, "patch_size": 4}}


def half_flops(make: Callable[[float], torch.nn.Module], dense_flops: int, x: torch.Tensor) -> tuple[float, object]:
    """Bisect the pruning amount whose model has about half the dense FLOPs (the amount, the model)."""
    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (low + high) / 2
        try:
            model = make(mid)
        except Exception:  # noqa: BLE001 - beyond what the method can reach
            high = mid
            continue
        ratio = flops(model, x) / dense_flops
        best = (mid, model) if ratio <= 0.5 or best is None else best
        low, high = (mid, high) if ratio > 0.5 else (low, mid)
    return best


def candidates(name: str, width: int | None, x: torch.Tensor) -> list[tuple[str, float, torch.nn.Module]]:
    options = {"width": width} if width else VIT
    dense = build_model("vit" if width is None else name, 10, options, seed=0).eval()
    dense_flops = flops(dense, x)
    names = prunable_names(dense, PrunableConfig(prune_stem=width is not None))
    params = {n: p.detach() for n, p in dense.named_parameters()}
    tickets = CNN_TICKETS if width else {"heads and FFN neurons (head_ffn)": ("head_ffn_magnitude", "none", 1)}
    rows = [("dense", 0.0, dense)]
    for label, (method, structure, multiple) in tickets.items():
        def make(s: float, method: str = method, structure: str = structure, multiple: int = multiple) -> torch.nn.Module:
            mask = prune(method, params, Mask.ones(dense, names), s, None, dense, structure, multiple)
            small = slim(dense, mask)
            with torch.no_grad():
                assert (small(x) - mask.apply_(build_model(name if width else "vit", 10, options, seed=0).eval())(x)
                        ).abs().max() < 1e-4
            return small
        found = half_flops(make, dense_flops, x)
        if found:
            rows.append((label, found[0], found[1]))
    if width:
        import torch_pruning as tp

        def torch_pruning(ratio: float) -> torch.nn.Module:
            model = build_model(name, 10, options, seed=0).eval()
            tp.pruner.MagnitudePruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[model.head]).step()
            return model
        ratio, model = half_flops(torch_pruning, dense_flops, x)
        rows.append(("Torch-Pruning one-shot L1 (no ticket)", ratio, model))
    return rows


def speed(models: list[str], threads: list[int], seconds: float) -> None:
    for spec in models:
        name, _, width = spec.partition(":")
        x32 = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        rows = candidates(name, int(width) if width else None, x32)
        dense_flops = flops(rows[0][2], x32[:1])
        title = f"{name} width {width}" if width else "ViT (6 layers, 192 wide, 3 heads, 4-px patches)"
        print(f"\n{title}, 32-px input, torch {torch.__version__}")
        print("| structure | amount | params | FLOPs | threads | batch 1 ms | batch 32 ms (IQR) | speed-up b32 |")
        print("|---|---|---|---|---|---|---|---|")
        for count in threads:
            torch.set_num_threads(count)
            with torch.no_grad():
                b1 = interleaved([lambda m=m, x=x32[:1]: m(x) for _, _, m in rows], seconds)
                b32 = interleaved([lambda m=m, x=x32: m(x) for _, _, m in rows], seconds)
            for (label, amount, model), one, batch in zip(rows, b1, b32, strict=True):
                params = sum(p.numel() for p in model.parameters())
                print(f"| {label} | {amount:.3f} | {params:,} | ×{flops(model, x32[:1]) / dense_flops:.2f} | {count} | "
                      f"{one['median_ms']:.2f} | {batch['median_ms']:.2f} ({batch['iqr_ms']:.2f}) | "
                      f"×{b32[0]['median_ms'] / batch['median_ms']:.2f} |")


def accuracy(seeds: int, epochs: int, width: int) -> None:
    """IMP on digits: dense vs unstructured vs coupled vs refill tickets at the coupled ticket's ½-FLOPs sparsity."""
    from ticketlab.config import parse_config
    from ticketlab.experiment import run_experiment
    from ticketlab.paths import IMP, RunPaths
    from ticketlab.results import score
    from ticketlab.runfolders import read_json
    from ticketlab.stats import mean_ci, paired_ci

    x = torch.randn(1, 3, 16, 16)
    dense = build_model("resnet20", 10, {"width": width}, seed=0).eval()
    names = prunable_names(dense, PrunableConfig(prune_stem=True))
    params = {n: p.detach() for n, p in dense.named_parameters()}
    target, _ = half_flops(lambda s: slim(dense, prune("coupled_channel_magnitude", params, Mask.ones(dense, names), s,
                                                       None, dense, "none", 8)), flops(dense, x), x)
    sparsities = [round(target * f, 4) for f in (0.4, 0.7, 1.0)]
    variants = {"unstructured IMP": ("global_magnitude", "none"), "coupled channels, widths ×8":
                ("coupled_channel_magnitude", "none"), "refill, widths ×8": ("layerwise_magnitude", "channel_refill")}
    scores: dict[str, list[float]] = {"dense": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for label, (method, structure) in variants.items():
                cfg = {"seed": seed, "model": {"name": "resnet20", "options": {"width": width}},
                       "task": {"name": "digits", "options": {"image_size": 16}},
                       "train": {"optimizer": "sgd", "lr": 0.1, "epochs": epochs, "batch_size": 64},
                       "prune": {"method": method, "structure": structure, "schedule": "explicit",
                                 "channel_multiple": 1 if method == "global_magnitude" else 8,
                                 "sparsities": sparsities, "rewind": "init", "prunable": {"prune_stem": True}},
                       "baselines": []}
                run = RunPaths(run_experiment(parse_config(cfg), Path(tmp), progress=False))
                if label == "unstructured IMP":
                    scores["dense"].append(score(read_json(run.metrics(IMP, 0))))
                scores.setdefault(label, []).append(score(read_json(run.metrics(IMP, len(sparsities)))))
    print(f"\nIMP on digits (16 px), ResNet-20 width {width}, {epochs} epochs a round, rewind to init, rounds at "
          f"{sparsities} of the prunable weights (the last: ½ FLOPs for coupled channels); seeds 0..{seeds - 1}")
    print("| ticket | test accuracy (95 % CI) | minus dense, paired (95 % CI) |")
    print("|---|---|---|")
    for label, values in scores.items():
        gap = "" if label == "dense" else str(paired_ci(values, scores["dense"]))
        print(f"| {label} | {mean_ci(values)} | {gap} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20:16", "resnet18:64", "vit"],
                        help="name:width for ticketlab's ResNets, or vit")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per candidate and batch size")
    parser.add_argument("--seeds", type=int, default=0, help="also train tickets on digits with this many seeds")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=16, help="ResNet-20 width of the accuracy part")
    args = parser.parse_args()
    speed(args.models, args.threads, args.seconds)
    if args.seeds:
        accuracy(args.seeds, args.epochs, args.width)


if __name__ == "__main__":
    main()
