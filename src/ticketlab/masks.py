"""The mask: parameter name -> boolean keep-tensor. Masks live apart from weights.

Saved as safetensors (uint8) plus a JSON sidecar with how the mask was found, sparsity per layer
and a fingerprint of the model (names and shapes of the masked parameters).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketlab.errors import CorruptFileError, MaskMismatchError
from ticketlab.tensorfiles import load_tensors, save_tensors


class Mask:
    """A set of boolean keep-masks, one per prunable parameter (True = kept)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors: dict[str, torch.Tensor] = {k: v.detach().to("cpu", torch.bool) for k, v in tensors.items()}

    # construction -----------------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module, names: Iterable[str]) -> Mask:
        params = dict(model.named_parameters())
        return cls({n: torch.ones_like(params[n], dtype=torch.bool, device="cpu") for n in names})

    def flat(self) -> torch.Tensor:
        """All keep-flags concatenated in parameter order (the view global pruning works on)."""
        return torch.cat([t.flatten() for t in self.tensors.values()])

    def with_flat(self, flat: torch.Tensor) -> Mask:
        """A mask of the same layout from flags in :meth:`flat` order."""
        out, offset = {}, 0
        for name, t in self.tensors.items():
            out[name] = flat[offset : offset + t.numel()].view_as(t)
            offset += t.numel()
        return Mask(out)

    # accounting -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tensors)

    def num_total(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def num_pruned(self) -> int:
        return sum(int((~t).sum()) for t in self.tensors.values())

    def sparsity(self) -> float:
        """Fraction of the prunable set that is pruned."""
        total = self.num_total()
        return self.num_pruned() / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {n: float((~t).sum()) / t.numel() for n, t in self.tensors.items()}

    def model_sparsity(self, model: nn.Module) -> float:
        """Fraction of *all* model parameters removed by this mask."""
        total = sum(p.numel() for p in model.parameters())
        return self.num_pruned() / total

    def fingerprint(self) -> dict[str, list[int]]:
        return {n: list(t.shape) for n, t in self.tensors.items()}

    def digest(self) -> str:
        """A short content hash of names, shapes and keep-flags (cache keys of results that used this mask)."""
        h = hashlib.sha256()
        for name, t in self.tensors.items():
            h.update(f"{name}{list(t.shape)}".encode())
            h.update(np.packbits(t.flatten().numpy()).tobytes())
        return h.hexdigest()[:12]

    # algebra ----------------------------------------------------------------------------------
    def complement(self) -> Mask:
        return Mask({n: ~t for n, t in self.tensors.items()})

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Mask)
            and self.tensors.keys() == other.tensors.keys()
            and all(torch.equal(t, other.tensors[n]) for n, t in self.tensors.items())
        )

    __hash__ = None  # type: ignore[assignment]

    # model interaction ------------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> None:
        """Raise MaskMismatchError naming the first parameter the mask does not fit."""
        params = dict(model.named_parameters())
        for name, tensor in self.tensors.items():
            if name not in params:
                raise MaskMismatchError(
                    f"mask does not fit the model: parameter {name!r} is not in {type(model).__name__}; "
                    "use a mask found on the same architecture"
                )
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise MaskMismatchError(
                    f"mask does not fit the model: {name!r} has shape {tuple(params[name].shape)} in the model "
                    f"but {tuple(tensor.shape)} in the mask; use a mask found on the same architecture"
                )

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place."""
        self.check_fits(model)
        params = dict(model.named_parameters())
        for name, keep in self.tensors.items():
            params[name].mul_(keep.to(params[name].device, params[name].dtype))
        return model

    # persistence ------------------------------------------------------------------------------
    def save(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        info = dict(meta or {})
        info.update(
            sparsity=self.sparsity(),
            num_pruned=self.num_pruned(),
            num_total=self.num_total(),
            layer_sparsity=self.layer_sparsity(),
            fingerprint=self.fingerprint(),
        )
        info["packed"] = True  # one bit per weight (np.packbits of the flattened mask)
        save_tensors(path, {n: torch.from_numpy(np.packbits(t.flatten().numpy())) for n, t in self.tensors.items()},
                     info)

    @classmethod
    def load(cls, path: Path) -> Mask:
        """A saved mask: bit-packed (current) or one byte per weight (files written before packing)."""
        tensors, meta = load_tensors(path)
        if not meta.get("packed"):
            return cls({n: t.bool() for n, t in tensors.items()})
        shapes = meta.get("fingerprint", {})
        out = {}
        for name, packed in tensors.items():
            if name not in shapes:
                raise CorruptFileError(f"{path}: no shape for {name!r} in its sidecar; delete its folder and re-run")
            numel = int(np.prod(shapes[name]))
            bits = np.unpackbits(packed.numpy(), count=numel) if packed.numel() * 8 >= numel else None
            if bits is None:
                raise CorruptFileError(f"{path}: {name!r} holds too few bits; delete its folder and re-run")
            out[name] = torch.from_numpy(bits.astype(bool)).view(*shapes[name])
        return cls(out)

    @staticmethod
    def load_meta(path: Path) -> dict[str, Any]:
        return load_tensors(path)[1]
