"""Unstructured vs structured vs 2:4 tickets of one config at matched sparsity: accuracy and speed.

Each kind is found by the same runner from the same θp — one pruning round straight to the target sparsity
(one-shot magnitude from the dense fine-tuned weights, rewound to θp and retrained) — so only the pruning
pattern differs. Speed is CPU latency at batch 32 (median, ``torch.utils.benchmark``) of what each kind can
really run: the unstructured ticket stored densely (no sparse kernel beats dense at these sparsities), the
structured ticket with its channels / heads removed, the 2:4 ticket densely (2:4 kernels exist on GPUs only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ticketlab.bench import example_inputs, flops, interleaved
from ticketlab.config import ExperimentConfig
from ticketlab.experiment import run_experiment
from ticketlab.export import ticket_model
from ticketlab.figures import markdown_table, pct
from ticketlab.fileio import read_json
from ticketlab.models.base import TicketModel, build_model
from ticketlab.paths import IMP, RunPaths
from ticketlab.results import score
from ticketlab.surgery import slim

# (kind, method, sparsity): all at 2:4's 50 % of the prunable weights (the mask counts every removed weight)
KINDS = (("unstructured", "global_magnitude", 0.5), ("structured", None, 0.5), ("2:4", "nm_2_4_magnitude", 0.5))


def structured_method(model: TicketModel) -> str:
    return "head_ffn_magnitude" if model.family == "transformer" else "coupled_channel_magnitude"


def compare_structures(config: ExperimentConfig, runs_dir: Path, seconds: float = 3.0,
                       progress: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Rows (kind, sparsity, test score, chance, params, latency) and the markdown table of them."""
    rows: list[dict[str, Any]] = []
    models: list[TicketModel] = []
    for kind, method, sparsity in KINDS:
        if method is None:
            method = structured_method(build_model(config.model.name, 2, config.model.options))
        run = run_experiment(_one_round(config, method, sparsity), runs_dir, progress)
        model, mask, _ = ticket_model(run, 1)
        metrics = read_json(RunPaths(run).metrics(IMP, 1))
        if not rows:
            dense = read_json(RunPaths(run).metrics(IMP, 0))
            dense_model = ticket_model(run, 0)[0]
            rows.append(_row("dense", 0.0, dense, dense_model))
            models.append(dense_model)
        runnable = slim(model, mask) if kind == "structured" else model
        rows.append(_row(kind, mask.sparsity(), metrics, runnable, method))
        models.append(runnable)
    for row, (median, spread) in zip(rows, interleaved_latency(models, seconds), strict=True):
        row["latency_ms"], row["iqr_ms"] = median, spread
    dense_ms = rows[0]["latency_ms"]
    table = markdown_table(
        ["kind", "method", "sparsity (prunable)", "test score", "chance", "non-zero parameters", "FLOPs run",
         "CPU ms (batch 32)", "speed-up"],
        [[r["kind"], r["method"], pct(r["sparsity"]), pct(r["test_score"]), pct(r["chance"]) if r["chance"] else "–",
          f"{r['params']:,}", f"{r['flops']:,}", f"{r['latency_ms']:.1f} ± {r['iqr_ms']:.1f}",
          f"×{dense_ms / r['latency_ms']:.2f}"] for r in rows])
    note = ("One seed, one round straight to the target (one-shot magnitude, rewound to θp and retrained): a "
            "demonstration of the trade-off, not a result. Unstructured and 2:4 tickets run densely on CPU (same "
            "FLOPs as dense); latency is the median of interleaved rounds ± its interquartile range — differences "
            "within it are noise. A channel ticket prunes Torch-Pruning's coupled channel groups (residual streams "
            "included) by the same fraction in every group, so its FLOPs fall about as fast as its weights.")
    return rows, f"{table}\n\n{note}\n"


def _one_round(config: ExperimentConfig, method: str, sparsity: float) -> ExperimentConfig:
    prune = dataclasses.replace(config.prune, method=method, schedule="explicit", sparsities=[sparsity], rounds=1)
    return dataclasses.replace(config, prune=prune, baselines=[], baseline_rounds=[])


def _row(kind: str, sparsity: float, metrics: dict[str, Any], model: TicketModel, method: str = "–") -> dict[str, Any]:
    return {"kind": kind, "method": method, "sparsity": sparsity, "test_score": score(metrics),
            "chance": metrics.get("chance_test"), "params": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
            "flops": flops(model, example_inputs(model)[:1])}


def interleaved_latency(models: list[TicketModel], seconds: float, rounds: int = 7) -> list[tuple[float, float]]:
    """(median, interquartile range) in ms of each model at batch 32, timed in interleaved rounds so that drifts
    of the machine's speed hit every model alike."""
    one = example_inputs(models[0])[:1]
    batch = one.expand(32, *one.shape[1:]).contiguous()
    return [(t["median_ms"], t["iqr_ms"]) for t in interleaved(models, batch, "cpu", seconds, rounds)]
