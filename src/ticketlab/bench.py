"""Real size and speed of a ticket next to its dense model: parameters (non-zero), FLOPs, file size, latency at
batch 1 and throughput at batch 32 (median with interquartile range, ``torch.utils.benchmark``), on CPU and on
a GPU when present.

An unstructured ticket stored densely runs exactly as fast as the dense model (its zeros are still multiplied);
the table says so rather than hiding it. A structured ticket (channels, heads, FFN neurons) is also timed with its
pruned groups physically removed (``ticketlab.surgery.slim``; its file is the ``slim`` export). Sizes come from
the exports (``ticketlab export``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from ticketlab.errors import ConfigError
from ticketlab.export import STRUCTURED, example_inputs, export_ticket, ticket_model
from ticketlab.masks import Mask
from ticketlab.models.base import TicketModel
from ticketlab.onnx_export import export_onnx, ort_latency
from ticketlab.pruning.base import PRUNING_METHODS
from ticketlab.surgery import slim


def _bench_onnxruntime(ticket: TicketModel, mask: Mask, structured: bool, seconds: float) -> list[dict[str, Any]]:
    """ONNX Runtime (CPU) latency at batch 1 and 32, the variants timed in interleaved rounds."""
    one = example_inputs(ticket)[:1]
    batch = one.expand(32, *one.shape[1:]).contiguous()
    models = {"ticket (masked = dense compute)": ticket}
    if structured:
        models["ticket (structures removed)"] = slim(ticket, mask)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (label, model) in enumerate(models.items()):
            paths[label] = Path(tmp) / f"v{i}.onnx"
            export_onnx(model, example_inputs(ticket), paths[label])
        b1 = ort_latency(list(paths.values()), one, seconds)
        b32 = ort_latency(list(paths.values()), batch, seconds)
        sizes = {label: path.stat().st_size for label, path in paths.items()}
    rows = []
    for (label, model), (m1, q1), (m32, _) in zip(models.items(), b1, b32, strict=True):
        rows.append({"variant": label, "device": "cpu (onnxruntime)",
                     "params": sum(p.numel() for p in model.parameters()),
                     "nonzero_params": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
                     "flops_b1": flops(model.cpu(), one), "file_bytes": sizes[label],
                     "latency_b1": {"median_ms": m1, "iqr_ms": q1}, "throughput_b32": 32 / (m32 / 1000)})
    return rows


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


RUNTIMES = ("torch", "onnxruntime")


def bench_ticket(run_dir: Path, k: int, seconds: float = 1.0, runtime: str = "torch") -> list[dict[str, Any]]:
    """One row per (variant, device): the dense model (round 0 weights' architecture) and the ticket; under
    ``onnxruntime``, the ticket's ONNX exports (masked = the dense computation, and slim when structured)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown --runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    ticket, mask, info = ticket_model(run_dir, k)
    structured = PRUNING_METHODS.get(info["config"].prune.method).scope in STRUCTURED
    if runtime == "onnxruntime":
        return _bench_onnxruntime(ticket, mask, structured, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        formats = ["state_dict", "compressed", *(["slim"] if structured else [])]
        files = {r["format"]: r for r in export_ticket(run_dir, k, Path(tmp), formats)}
    one = example_inputs(ticket)[:1]
    batch = one.expand(32, *one.shape[1:]).contiguous()
    total = sum(p.numel() for p in ticket.parameters())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for label, nonzero, size in (("dense", total, files["state_dict"]["dense_bytes"]),
                                 ("ticket (dense storage)", total - mask.num_pruned(), files["state_dict"]["bytes"]),
                                 ("ticket (compressed file)", total - mask.num_pruned(), files["compressed"]["bytes"])):
        for device in devices:
            rows.append({"variant": label, "device": device, "params": total, "nonzero_params": nonzero,
                         "flops_b1": flops(ticket.cpu(), one), "file_bytes": size,
                         "latency_b1": timing(ticket, one, device, seconds),
                         "throughput_b32": 32 / (timing(ticket, batch, device, seconds)["median_ms"] / 1000)})
    if structured:  # a channel or head/FFN ticket: time it with its pruned groups physically removed
        small = slim(ticket, mask)
        for device in devices:
            rows.append({"variant": "ticket (structures removed)", "device": device,
                         "params": sum(p.numel() for p in small.parameters()),
                         "nonzero_params": sum(int(torch.count_nonzero(p)) for p in small.parameters()),
                         "flops_b1": flops(small.cpu(), one), "file_bytes": files["slim"]["bytes"],
                         "latency_b1": timing(small, one, device, seconds),
                         "throughput_b32": 32 / (timing(small, batch, device, seconds)["median_ms"] / 1000)})
    return rows
