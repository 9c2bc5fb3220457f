"""Interleaved timing, the one way ticketlab times anything it compares (PyTorch models, ONNX Runtime sessions):
a warm-up call each (never timed), then rounds in which every candidate runs for its share of the budget in turn,
so a drift of the machine's speed hits every candidate alike; median and interquartile range per candidate. A leaf.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(calls: list[Callable[[], Any]], seconds: float, rounds: int = 7,
                sync: Callable[[], Any] = lambda: None) -> list[dict[str, float]]:
    """``{"median_ms", "iqr_ms"}`` per call of each candidate; ``sync`` waits for queued device work (CUDA)."""
    samples: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    sync()
    for _ in range(rounds):
        for i, call in enumerate(calls):
            count, started = 0, time.perf_counter()
            while count < 1 or time.perf_counter() - started < seconds / rounds:
                call()
                count += 1
            sync()
            samples[i].append(1000 * (time.perf_counter() - started) / count)
    out = []
    for values in samples:
        ordered = sorted(values)
        q = len(ordered) // 4
        out.append({"median_ms": statistics.median(ordered), "iqr_ms": ordered[-1 - q] - ordered[q]})
    return out
