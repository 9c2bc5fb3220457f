"""Run locks: ``flock`` on ``<folder>/.lock``, so two processes never work on one run at the same time.

The lock dies with its process (the kernel releases it), so a killed run never leaves a stale lock; a
run's status is ``running`` only while some process holds its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ticketlab.errors import TicketlabError

LOCK_NAME = ".lock"


class RunLockedError(TicketlabError):
    """Another live process holds the run's lock."""


def run_lock(folder: Path, what: str) -> contextlib.AbstractContextManager[None]:
    """Hold ``folder``'s lock for the block; if another process holds it, a one-line error naming its pid."""
    return file_lock(Path(folder) / LOCK_NAME, what)


@contextmanager
def file_lock(path: Path, what: str, remove: bool = False) -> Iterator[None]:
    """Hold the ``flock`` of file ``path`` (created if missing) for the block; one-line error if it is taken.

    ``remove``: delete the file when done (while still holding it), so finished work leaves no lock file behind;
    a process that locked the file just before it was deleted notices (another inode now, or none) and retries.
    """
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLockedError(f"{what} is in use by process {holder} (another ticketlab command); wait for it to "
                                 f"finish, or stop it (kill {holder}) and re-run") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file that its last holder deleted: lock the new one
    else:
        raise RunLockedError(f"could not lock {path} for {what}; delete it and re-run")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        if remove:
            Path(path).unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_locked(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s lock right now."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
