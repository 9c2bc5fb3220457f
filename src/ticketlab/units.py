"""The one resumable unit of work: every training ticketlab runs (pre-training, IMP round, baseline branch,
transfer fine-tune, patch student) goes through :func:`run_unit`.

One implementation of: cache check (a unit whose result file exists is never recomputed) → lock (two processes
never train one unit; the lock dies with its process) → train with mid-round checkpoints (beside the result
folder, so a killed unit resumes where it stopped) → rank-0 atomic write (under several processes every rank
trains, only rank 0 writes the folder) → verify (the published folder against its manifest) → clean-up (the
checkpoint is deleted once the result is safe).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ticketlab.engine import is_main_process, wait_for_everyone
from ticketlab.errors import CorruptFileError
from ticketlab.fileio import atomic_dir, verify_dir
from ticketlab.locks import file_lock
from ticketlab.paths import training_checkpoint
from ticketlab.progress import unit_event, unit_log

T = TypeVar("T")


UNIT_LOG = "log.txt"  # each unit's own log, published inside its folder


def unit_lock_path(folder: Path) -> Path:
    return Path(folder).parent / f".{Path(folder).name}.lock"


def unit_log_path(folder: Path) -> Path:
    """Beside the folder while the unit trains (it survives a kill; a resume appends), then moved inside."""
    return Path(folder).parent / f".{Path(folder).name}.log"


def run_unit(folder: Path, done_file: str, train: Callable[[Path], T], write: Callable[[Path, T], None],
             what: str) -> T | None:
    """Run one unit whose result is ``folder`` (finished when ``folder/done_file`` exists).

    ``train(checkpoint)`` does the work, saving and resuming mid-round checkpoints at ``checkpoint``;
    ``write(tmp, payload)`` fills the temporary folder that is published atomically as ``folder``. Returns the
    payload, or None when the unit had already finished (then nothing is trained or written)."""
    folder = Path(folder)
    if (folder / done_file).is_file():
        return None
    main = is_main_process()
    if main:
        folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(unit_lock_path(folder), what, remove=True) if main else contextlib.nullcontext():
        if (folder / done_file).is_file():  # finished by another process while this one waited for the lock
            return None
        checkpoint = training_checkpoint(folder)
        log = unit_log_path(folder)
        with unit_log(log) if main else contextlib.nullcontext():
            unit_event(f"{what}: {'resuming from its checkpoint' if checkpoint.is_file() else 'starting'}")
            try:
                payload = train(checkpoint)
            except BaseException as exc:
                unit_event(f"{what}: stopped by {type(exc).__name__}: {exc}")
                raise
            unit_event(f"{what}: trained; writing {folder.name}")
        if main:
            with atomic_dir(folder) as tmp:
                write(tmp, payload)
                shutil.copyfile(log, tmp / UNIT_LOG)
            problems = verify_dir(folder)
            if problems:
                raise CorruptFileError(f"{problems[0]} right after writing it (a failing disk?); delete {folder} and "
                                       "re-run")
            checkpoint.unlink(missing_ok=True)
            log.unlink(missing_ok=True)
    wait_for_everyone()
    return payload
