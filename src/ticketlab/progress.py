"""Progress for long runs: tqdm bars on a terminal; when stderr is a file or a pipe (a cluster log, ``nohup``),
one plain line every ``TICKETLAB_PROGRESS_SECONDS`` seconds (default 10) with the rate, the ETA and the latest
metrics, and no escape codes — a log stays a log."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("TICKETLAB_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str = "", total: int | None = None, initial: int = 0,
             unit: str = "it", disable: bool = False, leave: bool = True, unit_scale: bool = False) -> Any:
    """A tqdm-compatible progress object (``update``, ``set_postfix``, ``set_description``, ``close``, iteration)."""
    if disable or sys.stderr.isatty() or "ipykernel" in sys.modules:  # a terminal or a notebook: live bars
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, disable=disable, leave=leave,
                    unit_scale=unit_scale, dynamic_ncols=True)
    return PlainProgress(iterable, desc, total, initial, unit)


_UNIT_LOG: ContextVar[TextIO | None] = ContextVar("unit_log", default=None)


@contextlib.contextmanager
def unit_log(path: Path) -> Iterator[None]:
    """Within the block, :func:`log_line` and :func:`unit_event` also append (time-stamped) to ``path``: a unit's
    own log, whatever the console shows (a Ray worker shows none). Appended, so a resumed unit's log shows where it
    stopped."""
    with open(path, "a", encoding="utf-8") as handle:
        token = _UNIT_LOG.set(handle)
        try:
            yield
        finally:
            _UNIT_LOG.reset(token)


def unit_event(text: str) -> None:
    """A line for the current unit's log only (epoch summaries: the console has its progress bar)."""
    handle = _UNIT_LOG.get()
    if handle is not None:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [pid {os.getpid()}] {text}\n")
        handle.flush()


def log_line(text: str) -> None:
    """A message between progress lines (``tqdm.write`` on a terminal, a plain line otherwise)."""
    unit_event(text)
    if sys.stderr.isatty() or "ipykernel" in sys.modules:
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


class PlainProgress:
    """Plain log lines: ``desc: 120/300 sample (40%), 35.2 sample/s, ETA 5s, loss=0.91``."""

    def __init__(self, iterable: Iterable[Any] | None, desc: str, total: int | None, initial: int, unit: str) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.postfix = ""
        self.started = self.last = time.perf_counter()
        self.every = interval()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.n > self.start_n or self.postfix:
            self._emit(done=True)
        self.start_n = self.n  # closing twice (iteration end, then close()) prints once
        self.postfix = ""

    def _emit(self, done: bool = False) -> None:
        now = time.perf_counter()
        self.last = now
        rate = (self.n - self.start_n) / max(now - self.started, 1e-9)
        parts = [f"{self.n:,}/{self.total:,} {self.unit} ({self.n / max(self.total, 1):.0%})" if self.total
                 else f"{self.n:,} {self.unit}", f"{rate:.3g} {self.unit}/s"]
        if done:
            parts.append(f"done in {_duration(now - self.started)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc or 'progress'}: {', '.join(parts)}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
