"""ONNX export of a ticket (masked, or slim for a structured ticket) with the torch exporter (``dynamo=True``),
checked on the spot: ONNX Runtime's outputs must equal the PyTorch ticket's within 1e-4 at batch 1 and 3 (the
batch axis is dynamic), or the file is removed and the export refused. Weights are stored inside the one file.

ONNX Runtime latency (``bench --runtime onnxruntime``) is timed here too (``timing.interleaved``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ticketlab.errors import TicketlabError
from ticketlab.timing import interleaved

TOLERANCE = 1e-4
INSTALL = "pip install 'ticketlab[onnx]' (onnx, onnxscript, onnxruntime)"


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise TicketlabError(f"--format onnx and --runtime onnxruntime need {module}: {INSTALL}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's notes (skipped torchvision ops, constant folding) are not the user's business."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_error(exc: BaseException) -> TicketlabError:
    """One line naming the operator the exporter could not convert (or the deepest cause)."""
    text = str(exc)
    ops = re.findall(r"OpOverload\(op='([^']+)'", text) or re.findall(r"operator '([^']+)'", text)
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
        ops = ops or re.findall(r"OpOverload\(op='([^']+)'", str(cause))
    if ops:
        return TicketlabError(f"ONNX export failed: unsupported operator {ops[0]}; export state_dict or compressed "
                              "instead")
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().splitlines()[0][:200] if str(cause).strip() else ""
    return TicketlabError(f"ONNX export failed ({type(cause).__name__}: {first}); export state_dict or compressed")


def session(path: Path) -> Any:
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> float:
    """Write ``model`` to ``path`` (batch axis dynamic), check it in ONNX Runtime; returns the max |Δ output|."""
    _need("onnx")
    _need("onnxscript")
    model = model.eval()
    sample = x if x.shape[0] >= 2 else torch.cat([x, x])  # batch 1 would be specialised as a constant
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _quiet():
            try:
                program = torch.onnx.export(model, (sample,), dynamo=True, input_names=["input"],
                                            output_names=["logits"], opset_version=18, verbose=False,
                                            dynamic_shapes=({0: "batch"},))
            except torch.onnx.errors.OnnxExporterError as exc:
                raise _export_error(exc) from None
            for node in program.model.graph.all_nodes():
                node.metadata_props.clear()  # stack traces of every node: half the file for nothing
            program.save(str(tmp), external_data=False)
        sess = session(tmp)
        diff = 0.0
        for batch in (sample[:1], torch.cat([sample, sample[:1]])):  # batch 1 and 3: the axis is really dynamic
            with torch.no_grad():
                ours = model(batch)
            diff = max(diff, float((run_session(sess, batch) - ours).abs().max()))
        if diff > TOLERANCE:
            raise TicketlabError(f"the ONNX export does not reproduce the ticket in ONNX Runtime (max output "
                                 f"difference {diff:.2e} > {TOLERANCE:g}); nothing was written")
        tmp.replace(path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def ort_latency(paths: list[Path], x: torch.Tensor, seconds: float, rounds: int = 7) -> list[dict[str, float]]:
    """Median and IQR (ms per call) of each ONNX file on ``x`` in ONNX Runtime (``timing.interleaved``)."""
    sessions = [session(p) for p in paths]
    return interleaved([lambda s=s: run_session(s, x) for s in sessions], seconds, rounds)
