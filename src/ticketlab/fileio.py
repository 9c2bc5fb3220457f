"""Atomic, verified, durable writes and safe tensor I/O.

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
from typing import TYPE_CHECKING, Any

from ticketlab.errors import CorruptFileError, TicketlabError

if TYPE_CHECKING:  # torch is imported where tensors are read or written: checksums and JSON need none
    import torch

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


def _publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, honour the umask, rename it to ``final`` and fsync the folder."""
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())
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
        _publish(tmp, path)
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


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors plus a JSON sidecar holding ``meta`` and the file's sha256.

    The sidecar is published first: a visible tensor always has its checksum.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    tmp = tmp_path(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        sidecar = dict(meta or {})
        sidecar["sha256"] = sha256_of(tmp)
        write_json(sidecar_path(path), sidecar)
        _publish(tmp, path)
    except (OSError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from exc


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def load_tensors(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file ticketlab wrote, verifying it against its sidecar's sha256 (which must exist)."""
    meta = check_tensor_file(path, verify)
    return _read_safetensors(Path(path)), meta


def check_tensor_file(path: Path, verify: bool = True) -> dict[str, Any]:
    """A safetensors file ticketlab wrote, checked without loading it (no torch): its sidecar exists, its sha256
    matches, and its header describes tensors that fit inside the file. Returns the sidecar's metadata."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"file not found: {path}")
    if not sidecar_path(path).is_file():
        raise CorruptFileError(f"{path} has no checksum sidecar ({sidecar_path(path).name}); it is incomplete: "
                               "delete its folder and re-run")
    meta = read_json(sidecar_path(path))
    if not isinstance(meta, dict) or "sha256" not in meta:
        raise CorruptFileError(f"{sidecar_path(path)} holds no sha256; delete its folder and re-run")
    if verify and sha256_of(path) != meta["sha256"]:
        raise CorruptFileError(
            f"{path} does not match the checksum in {sidecar_path(path).name}: the file is corrupted "
            "or truncated; re-create it (delete the round folder and re-run)"
        )
    problem = _header_problem(path)
    if problem:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({problem}); it may be truncated")
    return meta


def _header_problem(path: Path) -> str | None:
    """What is wrong with a safetensors header (8-byte length, JSON of dtype/shape/offsets), or None."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            total = os.fstat(handle.fileno()).st_size
            if size <= 0 or 8 + size > total:
                return "header length out of range"
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        return str(exc)
    body = total - 8 - size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= body):
            return f"tensor {name!r} lies outside the file"
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from exc


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Reject NaN / infinite values in floating-point tensors, naming the first one."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CorruptFileError(f"{what} holds NaN or infinite values in {name!r}; it is not usable as weights")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a user checkpoint: safetensors, or a torch pickle with ``weights_only=True`` (never full unpickling)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors" and sidecar_path(path).is_file() and "sha256" in _json_or_empty(sidecar_path(path)):
        obj: Any = load_tensors(path)[0]  # written by ticketlab (a pre-training): verify its checksum
    elif path.suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise CorruptFileError(
                f"could not read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); it may be truncated, "
                "or hold objects other than tensors (only weights_only loading is allowed)"
            ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptFileError(f"{path} does not hold a state dict of tensors")
    check_finite(obj, f"checkpoint {path}")
    return obj


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
        _publish(tmp, final)
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
