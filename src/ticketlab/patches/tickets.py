"""Patch tickets: find them with a selector ViT, store them, and check they fit a dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.data.base import Task, model_device
from ticketlab.errors import DataError
from ticketlab.tensorfiles import check_tensor_file, load_tensors, save_tensors

SPLITS = ("train", "val", "test")


def dataset_fingerprint(task: Task) -> dict[str, Any]:
    """Sizes and a hash of the labels per split: enough to catch a ticket file made for other data."""
    return {s: {"n": len(getattr(task, s)),
                "labels_sha1": hashlib.sha1(getattr(task, s).y.numpy().tobytes()).hexdigest()[:16]}
            for s in SPLITS}


@torch.no_grad()
def find_tickets(selector: nn.Module, task: Task, batch_size: int = 256,
                 splits: tuple[str, ...] = SPLITS) -> dict[str, torch.Tensor]:
    """The surviving patch indices of every image (sorted), per split, from a token-reducing selector."""
    selector.eval()
    out = {}
    for split in splits:
        data = getattr(task, split)
        chunks = []
        for start in range(0, len(data), batch_size):
            selector(data.x[start : start + batch_size].to(model_device(selector)))
            chunks.append(selector.backbone.last_alive.sort(dim=1).values.cpu())
        out[split] = torch.cat(chunks)
    return out


def save_tickets(path: Path, tickets: dict[str, torch.Tensor], task: Task, keep_rate: float, num_patches: int,
                 grid: int, selector: dict[str, Any]) -> None:
    save_tensors(path, tickets, {"kind": "ticketlab-patch-tickets", "keep_rate": keep_rate,
                                 "num_patches": num_patches, "grid": grid, "kept": int(tickets["train"].shape[1]),
                                 "task": task.name, "dataset": dataset_fingerprint(task), "selector": selector})


def ticket_grid(path: Path) -> int:
    """The side of the selector's patch grid a ticket file was made on (from its sidecar; students map onto it)."""
    meta = check_tensor_file(path, verify=False)
    if meta.get("kind") != "ticketlab-patch-tickets" or "grid" not in meta:
        raise DataError(f"{path} is not a patch-ticket file (written by 'ticketlab select')")
    return int(meta["grid"])


def load_tickets(path: Path, task: Task, num_patches: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a ticket file and check it fits ``task`` and a student with ``num_patches`` patches."""
    tickets, meta = load_tensors(path)
    if meta.get("kind") != "ticketlab-patch-tickets":
        raise DataError(f"{path} is not a patch-ticket file (written by 'ticketlab select')")
    if meta["num_patches"] != num_patches:
        raise DataError(f"{path} was made for {meta['num_patches']} patches per image but the student has "
                        f"{num_patches}; use the same image and patch size as the selector")
    for split in SPLITS:
        n = len(getattr(task, split))
        if split not in tickets or tickets[split].shape[0] != n:
            have = tickets[split].shape[0] if split in tickets else 0
            raise DataError(f"{path} has tickets for {have} {split} images but the dataset has {n}; "
                            "re-run 'ticketlab select' on this dataset")
        if int(tickets[split].max()) >= num_patches or int(tickets[split].min()) < 0:
            raise DataError(f"{path}: {split} ticket indices fall outside the {num_patches}-patch grid")
    if meta["dataset"] != dataset_fingerprint(task):
        raise DataError(f"{path} was made for other data (labels differ); re-run 'ticketlab select' on this dataset")
    return tickets, meta


def with_tickets(task: Task, tickets: dict[str, torch.Tensor]) -> Task:
    """A copy of the task whose splits carry their images' patch tickets."""
    from dataclasses import replace

    return replace(task, **{s: replace(getattr(task, s), patches=tickets[s]) for s in SPLITS})


def ticket_grid_png(images: torch.Tensor, tickets: torch.Tensor, grid: int, path: Path, columns: int = 8) -> Path:
    """Images with their ticket patches shown and the dropped patches dimmed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), dpi=120, squeeze=False)
    size = images.shape[-1]
    p = size // grid
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = ((images[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1)
        keep = torch.zeros(grid * grid, dtype=torch.bool)
        keep[tickets[i]] = True
        dim = keep.view(grid, grid).repeat_interleave(p, 0).repeat_interleave(p, 1)
        shown = torch.where(dim[..., None], img, img * 0.2)
        ax.imshow(shown.numpy())
    fig.suptitle(f"patch tickets: {tickets.shape[1]} of {grid * grid} patches kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
