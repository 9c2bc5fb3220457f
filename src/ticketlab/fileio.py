"""Atomic writes and safe tensor I/O.

Everything ticketlab writes goes through a temporary file (or folder) and a rename, so a killed
process never leaves a half-written result. Files ticketlab did not create are never unpickled:
safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ticketlab.errors import CorruptFileError, TicketlabError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); delete it and re-run") from exc


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors plus a JSON sidecar holding ``meta`` and the file's sha256."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    sidecar = dict(meta or {})
    sidecar["sha256"] = sha256_of(tmp)
    os.replace(tmp, path)
    write_json(sidecar_path(path), sidecar)


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def load_tensors(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file (and its sidecar metadata, verifying the sha256 if present)."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"file not found: {path}")
    meta: dict[str, Any] = {}
    if sidecar_path(path).is_file():
        meta = read_json(sidecar_path(path))
        expected = meta.get("sha256")
        if verify and expected and sha256_of(path) != expected:
            raise CorruptFileError(
                f"{path} does not match the checksum in {sidecar_path(path).name}: the file is corrupted "
                "or truncated; re-create it (delete the round folder and re-run)"
            )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from exc
    return tensors, meta


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a user checkpoint: safetensors, or a torch pickle with ``weights_only=True`` (never full unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_tensors(path)[0]
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
    return obj


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TicketlabError(
            f"runs folder {path} is not writable ({exc.strerror}); pass --runs-dir to a folder you can write"
        ) from exc
    return path
