"""Deployable tickets, measured (issue 28): an 80 %-sparse (unstructured) MiniLM-L6 text ticket and a structured
(heads + FFN neurons) ViT ticket at about half the FLOPs, each exported in every format that applies.

Prints, per ticket: the size breakdown (pruned layers vs never-pruned parts), every format's size against the
ideal size at that sparsity (goal: compressed within 10 % of ideal), and latency at batch 32 dense-compute vs
slim ticket under PyTorch and under ONNX Runtime, interleaved in one run (goal: the slim ticket's speed-up under
ONNX Runtime at least the one under PyTorch). Trains each ticket for one short epoch: sizes and speed do not depend
on how well it is trained.

    python benchmarks/export_size.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ticketlab.bench import interleaved
from ticketlab.config import parse_config
from ticketlab.experiment import run_experiment
from ticketlab.export import example_inputs, export_ticket, ticket_model
from ticketlab.onnx_export import export_onnx, ort_latency
from ticketlab.sizes import breakdown_lines, size_breakdown
from ticketlab.surgery import slim

VIT = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768,
       "image_size": 32, "patch_size": 4}


def minilm_config(csv: Path) -> dict:
    return {"seed": 0, "model": {"name": "bert", "options": {"path": "minilm"}},
            "task": {"name": "text", "options": {"path": str(csv), "max_length": 32, "val_fraction": 0.25,
                                                 "test_fraction": 0.25}},
            "train": {"optimizer": "adamw", "lr": 5e-5, "epochs": 1, "batch_size": 16},
            "prune": {"method": "global_magnitude", "schedule": "explicit", "sparsities": [0.8]}, "baselines": []}


def vit_config() -> dict:
    return {"seed": 0, "model": {"name": "vit", "options": {"config": VIT}},
            "task": {"name": "scenes_shape", "options": {"n_train": 64, "n_val": 32, "n_test": 32}},
            "train": {"optimizer": "adamw", "lr": 1e-3, "epochs": 1, "batch_size": 32},
            "prune": {"method": "head_ffn_magnitude", "schedule": "explicit", "sparsities": [0.5], "rewind": "init"},
            "baselines": []}


def write_reviews(path: Path) -> Path:
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    rows = ["text,label"] + [f"\"a {words[i % 6]} film, {words[(i * 7) % 6]} plot\",{'pos' if i % 6 < 3 else 'neg'}"
                             for i in range(96)]
    path.write_text("\n".join(rows) + "\n")
    return path


def report(name: str, run: Path, formats: list[str], seconds: float, out: Path) -> None:
    ticket, mask, _ = ticket_model(run, 1)
    breakdown = size_breakdown(ticket.state_dict(), mask)
    print(f"\n## {name}\n")
    print("\n".join(breakdown_lines(breakdown)))
    ideal = breakdown["ideal_bytes"]
    print(f"\n{'format':<11} {'bytes':>12} {'× ideal':>8}  max |Δ output|")
    for row in export_ticket(run, 1, out, formats):
        print(f"{row['format']:<11} {row['bytes']:>12,} {row['bytes'] / ideal:>8.2f}  {row['max_abs_diff']:.1e}")
    structured = "slim" in formats
    small = slim(ticket, mask) if structured else ticket
    one = example_inputs(ticket)[:1]
    batch = one.expand(32, *one.shape[1:]).contiguous()
    torch_times = interleaved([ticket, small], batch, "cpu", seconds)
    paths = [out / "masked.onnx", out / "small.onnx"]
    export_onnx(ticket, example_inputs(ticket), paths[0])
    export_onnx(small, example_inputs(ticket), paths[1])
    label = "slim ticket" if structured else "ticket (dense storage)"
    print(f"\nlatency at batch 32 (median ± IQR, ms)   dense compute      {label:<22} speed-up")
    for runtime, (a, b) in (("PyTorch", torch_times), ("ONNX Runtime", ort_latency(paths, batch, seconds))):
        print(f"{runtime:<40}{a['median_ms']:7.2f} ± {a['iqr_ms']:5.2f}    {b['median_ms']:7.2f} ± "
              f"{b['iqr_ms']:5.2f}          ×{a['median_ms'] / b['median_ms']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per model and batch")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = run_experiment(parse_config(minilm_config(write_reviews(root / "reviews.csv"))), root / "runs",
                              progress=False)
        report("80 % unstructured MiniLM-L6 ticket (global magnitude)", text, ["state_dict", "compressed", "hf"],
               args.seconds, root / "text")
        vit = run_experiment(parse_config(vit_config()), root / "runs", progress=False)
        report("structured ViT ticket (heads + FFN neurons, 50 %)", vit,
               ["state_dict", "compressed", "slim", "onnx"], args.seconds, root / "vit")


if __name__ == "__main__":
    main()
