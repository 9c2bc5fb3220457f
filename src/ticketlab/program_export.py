"""A ticket as a ``torch.export`` program (``export --format pt2``): the architecture — a slim structured ticket's
smaller layers included — and its weights in one file that plain PyTorch loads and runs,
``torch.export.load(path).module()(x)``, with no ticketlab and no pickled Python code. The batch axis is dynamic;
the file is checked on the spot (reloaded, outputs equal the ticket's within 1e-4 at batch 1 and 3) or removed
and the export refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ticketlab.errors import TicketlabError

TOLERANCE = 1e-4


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:1].expand(n, *x.shape[1:]).contiguous() if n != len(x) else x


@torch.no_grad()
def export_program(model: torch.nn.Module, x: torch.Tensor, path: Path) -> float:
    """Write ``model`` to ``path``, reload it with plain ``torch.export.load``; returns the max |Δ output|."""
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.export.export(model, (_batch(x, 2),), dynamic_shapes=({0: batch},), strict=False)
            torch.export.save(program, str(path))
            loaded = torch.export.load(str(path)).module()
        diff = max(float((loaded(_batch(x, n)) - model(_batch(x, n))).abs().max()) for n in (1, 3))
    except Exception as exc:  # noqa: BLE001 - the exporter's many failure types become one line
        path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TicketlabError(f"torch.export failed ({type(exc).__name__}: {first}); export state_dict, compressed "
                             "or onnx instead") from None
    if diff > TOLERANCE:
        path.unlink(missing_ok=True)
        raise TicketlabError(f"the exported program's outputs differ from the ticket's by {diff:.2e} (> "
                             f"{TOLERANCE:g}); file removed — export state_dict or compressed instead")
    return diff
