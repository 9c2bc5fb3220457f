"""Real size and speed of a ticket next to its dense model: parameters (non-zero), FLOPs, file size, latency at
batch 1 and throughput at batch 32, on CPU and on a GPU when present — timings that can be believed.

Each distinct computation is timed once, all of them in interleaved rounds (≥ 5; a warm-up call first, never
timed), so a drift of the machine's speed hits every variant alike; medians with interquartile ranges. A ticket
stored densely (dense storage, compressed file) runs exactly the dense computation — its zeros are still
multiplied — so it shares the dense timing and its speed-up reads "×1.00 (runs densely)"; a structured ticket
(channels, heads, FFN neurons) is also timed with its pruned groups physically removed (``surgery.slim``). Any
round can be benched: where a round's trained weights were not kept, θp ⊙ m (same shapes, same speed) is timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.export import example_inputs, export_ticket, structured_ticket, ticket_model
from ticketlab.masks import Mask
from ticketlab.models.base import TicketModel
from ticketlab.onnx_export import export_onnx, ort_latency
from ticketlab.surgery import slim
from ticketlab.timing import interleaved as interleaved_calls

RUNTIMES = ("torch", "onnxruntime")
ROUNDS = 7  # interleaved repetitions per timing


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def timing(model: torch.nn.Module, x: torch.Tensor, device: str, seconds: float) -> dict[str, float]:
    model = model.to(device).eval()
    x = x.to(device)
    with torch.no_grad():
        measurement = benchmark.Timer("model(x)", globals={"model": model, "x": x}).blocked_autorange(
            min_run_time=seconds)
    return {"median_ms": 1000 * measurement.median, "iqr_ms": 1000 * measurement.iqr}


def interleaved(models: list[torch.nn.Module], x: torch.Tensor, device: str, seconds: float,
                rounds: int = ROUNDS) -> list[dict[str, float]]:
    """Median and IQR (ms per call) of each model on ``x`` (``timing.interleaved``: warm-up, then rounds)."""
    models = [m.to(device).eval() for m in models]
    x = x.to(device)
    with torch.no_grad():
        return interleaved_calls([lambda m=m: m(x) for m in models], seconds, rounds,
                                 sync=torch.cuda.synchronize if device == "cuda" else lambda: None)


def _ticket(run_dir: Path, k: int) -> tuple[TicketModel, Mask, dict[str, Any], bool]:
    try:
        return (*ticket_model(run_dir, k), False)
    except TicketlabError as exc:
        if "were not kept" not in str(exc):
            raise
        return (*ticket_model(run_dir, k, rewound=True), True)  # same shapes and zeros: the same speed


def bench_ticket(run_dir: Path, k: int, seconds: float = 1.0, runtime: str = "torch") -> list[dict[str, Any]]:
    """One row per (variant, device); under ``onnxruntime`` the ticket's ONNX exports (masked = the dense
    computation, and slim when structured)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown --runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    ticket, mask, info, rewound = _ticket(run_dir, k)
    structured = structured_ticket(info["config"])
    one = example_inputs(ticket)[:1]
    batch = one.expand(32, *one.shape[1:]).contiguous()
    models = {"dense": ticket, **({"ticket (structures removed)": slim(ticket, mask)} if structured else {})}
    total = sum(p.numel() for p in ticket.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        formats = ["state_dict", "compressed", *(["slim"] if structured else [])]
        files = {r["format"]: r for r in export_ticket(run_dir, k, Path(tmp), formats, rewound=rewound)}
        if runtime == "onnxruntime":
            paths = [Path(tmp) / f"v{i}.onnx" for i in range(len(models))]
            for model, path in zip(models.values(), paths, strict=True):
                export_onnx(model, example_inputs(ticket), path)
            timed = {"cpu (onnxruntime)": list(zip(ort_latency(paths, one, seconds), ort_latency(paths, batch, seconds),
                                                   strict=True))}
        else:
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            timed = {d: list(zip(interleaved(list(models.values()), one, d, seconds),
                                 interleaved(list(models.values()), batch, d, seconds), strict=True)) for d in devices}
    ticket.cpu()
    kept = total - mask.num_pruned()
    variants = [("dense", "dense", total, files["state_dict"]["dense_bytes"]),
                ("ticket (dense storage)", "dense", kept, files["state_dict"]["bytes"]),
                ("ticket (compressed file)", "dense", kept, files["compressed"]["bytes"])]
    if structured:
        small = models["ticket (structures removed)"].cpu()
        variants.append(("ticket (structures removed)", "ticket (structures removed)",
                         sum(int(torch.count_nonzero(p)) for p in small.parameters()), files["slim"]["bytes"]))
    index = {name: i for i, name in enumerate(models)}
    counts = {name: (sum(p.numel() for p in m.cpu().parameters()), flops(m, one)) for name, m in models.items()}
    rows = []
    for device, results in timed.items():
        base = results[index["dense"]][1]["median_ms"]
        for label, computation, nonzero, size in variants:
            b1, b32 = results[index[computation]]
            params, flop_count = counts[computation]
            rows.append({"variant": label, "device": device, "params": params,
                         "nonzero_params": nonzero, "flops_b1": flop_count, "file_bytes": size,
                         "latency_b1": b1, "throughput_b32": 32 / (b32["median_ms"] / 1000),
                         "speedup_b32": base / b32["median_ms"], "runs_densely": computation == "dense",
                         "weights": "θp ⊙ m (round's trained weights not kept)" if rewound else "trained θ ⊙ m"})
    return rows
