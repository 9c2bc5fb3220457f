"""Devices, mixed precision, gradient accumulation and multi-process training through Hugging Face Accelerate.

ticketlab's own loop (``train.py``: masks, objectives, best-validation selection, checkpoints) calls this
thin layer; Accelerate does the device placement, autocast, gradient scaling, process groups (``accelerate
launch`` / ``torchrun`` / Slurm) and main-process gating. Under several processes the global batch
(``train.batch_size``) is split evenly across ranks and gradients are averaged: by DDP when the objective
only calls ``model(inputs)``, else by an explicit all-reduce (objectives that call the backbone directly
would bypass DDP's hooks).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.config import EngineConfig
from ticketlab.errors import ConfigError

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve(cfg: EngineConfig) -> tuple[str, str]:
    """(device type, precision) after ``auto``; one-line errors for what this machine cannot do."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("engine.device is cuda but no CUDA device is visible; use engine.device: auto (or cpu)")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("engine.precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return device, precision


def cpu_safe(cfg: EngineConfig) -> EngineConfig:
    """``cfg`` with channels_last off where it resolves to the CPU: a GPU preset's step can still be timed there."""
    return dataclasses.replace(cfg, channels_last=False) if resolve(cfg)[0] == "cpu" else cfg


def resolve_threads(threads: int) -> int:
    """``engine.threads`` after ``auto`` (0): ``OMP_NUM_THREADS`` when set, else the cores this process may use."""
    if threads > 0:
        return threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def launcher_note() -> str | None:
    """Under ``accelerate launch`` with one process, say so: on CPU ``--num_processes N`` alone starts one process
    (``--multi_gpu --num_processes N`` starts N, through torchrun, on CPUs too)."""
    if "ACCELERATE_DYNAMO_BACKEND" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    return ("ticketlab: running 1 process (accelerate launch started only one; for N processes use "
            "'accelerate launch --multi_gpu --num_processes N' — also on CPUs — or 'torchrun --nproc_per_node N')")


def _process_state() -> Any:
    """Accelerate's process state. Without a GPU it must be created with ``cpu=True``, or a process started by
    torchrun / accelerate launch on CPUs believes it is alone (every rank then acts as rank 0); the first caller
    fixes it for the process, so rank questions asked before any training is set up need this too."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return _process_state().is_main_process


def wait_for_everyone() -> None:
    _process_state().wait_for_everyone()


def same_on_every_rank(value: str) -> bool:
    """Whether every process holds the same string (e.g. a mask digest); True for a single process."""
    from accelerate.utils import gather_object

    if _process_state().num_processes == 1:
        return True
    return len(set(gather_object([value]))) == 1


class Engine:
    """One training's view of the hardware: device, precision, ranks."""

    def __init__(self, cfg: EngineConfig | None = None, tracking_dir: Path | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.cfg = cfg or EngineConfig()
        self.device_type, self.precision = resolve(self.cfg)
        if self.cfg.channels_last and self.device_type == "cpu":  # measured: the 2nd backward never returns
            raise ConfigError("engine.channels_last: oneDNN's channels-last convolution backward hangs or crashes on "
                              f"CPU with torch {torch.__version__}; it speeds up GPUs only: set engine.channels_last: "
                              "false on CPU")
        self.threads = resolve_threads(self.cfg.threads)  # CPU results depend on it: recorded with every result
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        tracking = self.cfg.tracking if self.cfg.tracking != "none" and tracking_dir is not None else None
        if tracking and importlib.util.find_spec(tracking) is None:
            raise ConfigError(f"engine.tracking {tracking} needs its package: pip install {tracking}")
        AcceleratorState._reset_state()  # each training may ask for other settings; the process group survives
        self.accelerator = Accelerator(cpu=self.device_type == "cpu", mixed_precision=PRECISIONS[self.precision],
                                       gradient_accumulation_steps=self.cfg.grad_accumulation, log_with=tracking,
                                       project_dir=str(tracking_dir) if tracking else None)
        self.tracking = tracking is not None

    def start_tracking(self, name: str, config: dict[str, Any]) -> None:
        if self.tracking:
            self.accelerator.init_trackers(name, config={k: str(v) for k, v in config.items()})

    def log(self, row: dict[str, float], step: int) -> None:
        if self.tracking:
            self.accelerator.log(row, step=step)

    def end_tracking(self) -> None:
        if self.tracking:
            self.accelerator.end_training()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def check_batch(self, global_batch: int) -> None:
        """The global batch must split evenly into ranks × accumulation micro-batches."""
        if global_batch % (self.world_size * self.cfg.grad_accumulation):
            raise ConfigError(f"train.batch_size {global_batch} is not divisible by {self.world_size} processes × "
                              f"{self.cfg.grad_accumulation} accumulation steps; use a multiple of "
                              f"{self.world_size * self.cfg.grad_accumulation}")

    def prepare_model(self, model: nn.Module, wrap: bool) -> nn.Module:
        """Move to the device (channels_last, compile on request); DDP-wrap it when ``wrap`` and several ranks."""
        model.to(self.device)
        if self.cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            from torch import _dynamo

            if not _dynamo.is_dynamo_supported():
                raise ConfigError(f"engine.compile: torch.compile is unavailable with torch {torch.__version__} on "
                                  "this Python; set engine.compile: false")
            model.backbone.forward = torch.compile(model.backbone.forward)
        return self.accelerator.prepare_model(model) if wrap and self.world_size > 1 else model

    def to_device(self, inputs: Any) -> Any:
        if isinstance(inputs, torch.Tensor):
            moved = inputs.to(self.device, non_blocking=True)
            return moved.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and moved.dim() == 4 \
                else moved
        if isinstance(inputs, dict):
            return {k: self.to_device(v) for k, v in inputs.items()}
        if isinstance(inputs, tuple | list):
            return type(inputs)(self.to_device(v) for v in inputs)
        return inputs

    def all_reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Average gradients over ranks (objectives whose model is not DDP-wrapped)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.flatten() for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
