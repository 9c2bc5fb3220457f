"""Tensor files ticketlab writes and reads: safetensors with a JSON sidecar holding metadata and the file's
sha256, checkable without torch (``verify``, ``ls``); user checkpoints, never unpickled (safetensors, or
``torch.load(weights_only=True)``). Generic file rules (atomic writes, manifests) live in ``fileio``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketlab.errors import CorruptFileError, TicketlabError
from ticketlab.fileio import publish, read_json, sha256_of, storage_error, tmp_path, write_json

if TYPE_CHECKING:  # torch is imported where tensors are read or written: checksums and JSON need none
    import torch


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
        publish(tmp, path)
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


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of tensors a loaded checkpoint holds (at the top, or under ``state_dict`` / ``model`` /
    ``model_state_dict``), or None: the one rule of what a readable checkpoint is (loader and ``--dry-run``)."""
    import torch

    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    return obj


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
    obj = unwrap_state_dict(obj)
    if obj is None:
        raise CorruptFileError(f"{path} does not hold a state dict of tensors")
    check_finite(obj, f"checkpoint {path}")
    return obj
