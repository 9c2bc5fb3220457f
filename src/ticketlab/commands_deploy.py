"""The commands that take a ticket out of ticketlab: ``export`` (standard formats, checked, with the size
breakdown) and ``bench`` (size and speed next to dense). Thin: the work is in ``export``, ``onnx_export``,
``sizes`` and ``bench``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ticketlab.bench import bench_ticket
from ticketlab.commands_read import runs_dir_of as _runs_dir
from ticketlab.errors import ConfigError
from ticketlab.export import export_ticket, ticket_model
from ticketlab.paths import RunPaths, parse_ref
from ticketlab.sizes import breakdown_lines, size_breakdown


def cmd_export(args: argparse.Namespace) -> None:
    run, k = parse_ref(args.ticket, _runs_dir(args))
    k = RunPaths(run).finished_rounds()[-1] if k is None else k
    formats = args.format.split(",") if args.format else ["state_dict", "compressed"]
    rows = export_ticket(run, k, Path(args.out), formats, rewound=args.rewound)
    print(f"ticket {run.name}:{k} ({'θp ⊙ m' if args.rewound else 'trained θ ⊙ m'}), outputs checked against ticketlab")
    model, mask, _ = ticket_model(run, k, args.rewound)
    print("\n".join(breakdown_lines(size_breakdown(model.state_dict(), mask))))
    for row in rows:
        print(f"{row['format']:<11} {row['bytes']:>12,} bytes  (dense {row['dense_bytes']:,}: "
              f"{row['dense_bytes'] / row['bytes']:.2f}× smaller)  max |Δ output| {row['max_abs_diff']:.1e}  "
              f"{row['path']}")


def cmd_bench(args: argparse.Namespace) -> None:
    run, k = parse_ref(args.ticket, _runs_dir(args))
    k = RunPaths(run).finished_rounds()[-1] if k is None else k
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rows = bench_ticket(run, k, args.seconds, args.runtime)
    print(f"{run.name}:{k} ({rows[0]['weights']}), {args.runtime}, {torch.get_num_threads()} thread(s); median ± "
          "IQR of 7 interleaved rounds after a warm-up")
    for r in rows:
        speedup = "(runs densely)" if r["runs_densely"] and r["variant"] != "dense" else ""
        print(f"{r['variant']:<28} {r['device']:<4} params {r['nonzero_params']:>10,}/{r['params']:,}  "
              f"FLOPs(b1) {r['flops_b1']:>12,}  file {r['file_bytes']:>11,} B  latency(b1) "
              f"{r['latency_b1']['median_ms']:.2f} ± {r['latency_b1']['iqr_ms']:.2f} ms  "
              f"throughput(b32) {r['throughput_b32']:.0f}/s  speed-up(b32) ×{r['speedup_b32']:.2f} {speedup}".rstrip())
    model, mask, _ = ticket_model(run, k, rewound=rows[0]["weights"].startswith("θp"))
    print("\n".join(breakdown_lines(size_breakdown(model.state_dict(), mask))))
