"""Atomic, verified, durable writes (tensor files themselves: ``tensorfiles``).

Everything ticketlab writes goes through a temporary name and a rename, so a killed process never leaves
a half-written result: files are fsynced before the rename and their folder after it. A tensor file's
JSON sidecar (metadata + sha256) becomes visible *before* the tensor, so a tensor without a sidecar is
corruption, never a half-finished write. A finished folder (:func:`atomic_dir`) carries ``manifest.json``
with the sha256 of every file in it, written last. Temporary names carry the writer's pid, so stale ones
are removed only when no live process owns them. Files and folders honour the umask. Files ticketlab did
not create are never unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ticketlab.errors import CorruptFileError, TicketlabError

MANIFEST = "manifest.json"
TMP_MARK = ".tmp-"
_TMP_PID = re.compile(r"\.tmp-(\d+)-")


class StorageError(TicketlabError):
    """The file system refused a write or a read (disk full, read-only, permissions)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def storage_error(exc: BaseException, path: Path | str) -> TicketlabError:
    """One line naming the path and the fix for an OS-level failure."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or "No space left" in text or "disk is full" in text:
        return StorageError(f"disk full while writing {path}; free space or pass --runs-dir on another disk "
                            "(finished results are kept; re-run to resume)")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "read-only" in text or "readonly" in text:
        return StorageError(f"cannot write {path}: the file system is read-only or not writable; pass --runs-dir "
                            "to a folder you can write (finished results are kept)")
    return StorageError(f"cannot access {path} ({getattr(exc, 'strerror', None) or text}); check the path")


def tmp_path(path: Path) -> Path:
    """A temporary sibling of ``path`` that names this process (``.<name>.tmp-<pid>-<random>``)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def honour_umask(path: Path) -> None:
    """Give ``path`` (and everything under a folder) the modes a plain ``open`` would: some writers (safetensors,
    ``tempfile``) create files 0600 whatever the umask, which hides results from the rest of a group."""
    mask = _umask()
    for item in [Path(path), *(Path(path).rglob("*") if Path(path).is_dir() else [])]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, honour the umask, rename it to ``final`` and fsync the folder."""
    honour_umask(tmp)
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(final.parent)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Atomic, durable text write."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        publish(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from exc


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid UTF-8 JSON ({exc}); delete it (or its folder) and re-run") from exc
    except FileNotFoundError as exc:
        raise CorruptFileError(f"{path} is missing; delete its folder and re-run") from exc
    except OSError as exc:
        raise storage_error(exc, path) from exc


# -- folders -------------------------------------------------------------------------------------------
def manifest_of(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; when the block succeeds, write its manifest and rename it."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}{os.getpid()}-", dir=final.parent))
    except OSError as exc:
        raise storage_error(exc, final) from exc
    try:
        yield tmp
        write_json(tmp / MANIFEST, {"files": manifest_of(tmp), "released": []})
        if final.exists():
            shutil.rmtree(final)
        publish(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(exc, final) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_dir(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Problems of a finished folder against its manifest ([] = intact). ``skip``: file names not hashed."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return [f"{folder}: no {MANIFEST}"]
    manifest = read_json(folder / MANIFEST)
    files, released = manifest.get("files", {}), set(manifest.get("released", []))
    problems = []
    for name, digest in files.items():
        path = folder / name
        if name in released:
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.name not in skip and sha256_of(path) != digest:
            problems.append(f"{path}: checksum mismatch (corrupted or truncated)")
    return problems


def release_files(folder: Path, names: list[str]) -> None:
    """Delete files of a finished folder that no later step needs, recording them as released in the manifest."""
    names = [n for n in names if (folder / n).exists()]
    if (folder / MANIFEST).is_file():  # folders from before manifests: nothing to record
        manifest = read_json(folder / MANIFEST)
        manifest["released"] = sorted(set(manifest.get("released", [])) | set(names))
        write_json(folder / MANIFEST, manifest)
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _owner_alive(name: str) -> bool:
    match = _TMP_PID.search(name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files and folders under ``folder`` whose writing process is gone; return how many."""
    removed = 0
    for path in sorted(Path(folder).rglob(f".*{TMP_MARK}*"), key=lambda p: len(p.parts)):
        if path.exists() and not _owner_alive(path.name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    return removed


def is_writable(path: Path) -> bool:
    """Whether a file can be created in folder ``path`` (created if missing): a real write, not ``os.access``."""
    try:
        ensure_writable_dir(path)
    except TicketlabError:
        return False
    return True


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tmp_path(path / "write-probe")
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TicketlabError(
            f"runs folder {path} is not writable ({exc.strerror}); pass --runs-dir to a folder you can write"
        ) from exc
    return path
