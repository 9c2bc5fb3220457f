"""Benchmarks the README documents run (issue 25: token_keep.py crashed every time): tiny settings, real code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def test_token_keep_runs_and_prints_every_keep_rate():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/token_keep.py"), "--steps", "1", "--batch", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:3] in ("1.0", "0.9", "0.7", "0.5", "0.3")]
    assert [r[0] for r in rows] == ["1.0", "0.9", "0.7", "0.5", "0.3"]
    assert [int(r[1]) for r in rows] == [256, 231, 180, 128, 77] and all(float(r[3]) > 0 for r in rows)


def test_structured_speed_finds_half_flops_tickets_and_times_them_beside_torch_pruning():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/structured_speed.py"), "--models", "resnet20:8",
                           "--threads", "1", "--seconds", "0.05"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {cells[1].strip(): cells for line in done.stdout.splitlines() if line.startswith("| ")
            for cells in [line.split("|")] if cells[2].strip()[:1].isdigit()}
    assert {"dense", "coupled channels (Torch-Pruning groups)", "refill (layerwise IMP mask)",
            "Torch-Pruning one-shot L1 (no ticket)"} <= set(rows)
    for label, cells in rows.items():
        ratio = float(cells[4].strip().lstrip("×"))
        assert ratio == 1.0 if label == "dense" else 0.3 <= ratio <= 0.5, (label, ratio)  # about half
        assert float(cells[7].split("(")[0]) > 0
