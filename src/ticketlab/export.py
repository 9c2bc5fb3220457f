"""Export a ticket out of ticketlab: standard formats, checked on the spot, with their size on disk.

Formats (``FORMATS``):
- ``state_dict``: one safetensors file with the model family's own key names (torchvision layout for our
  ResNets: ``conv1.weight`` … ``fc.weight``; the Hugging Face model's keys for HF families), zeros at pruned
  weights.
- ``hf``: a ``save_pretrained`` folder (config, weights, and the checkpoint's tokenizer / image processor
  files) that plain ``transformers.AutoModel.from_pretrained`` loads without ticketlab; HF families only.
- ``slim`` (structured tickets: ``channel_*``, ``head_ffn_*``): the pruned channels / heads / FFN neurons are
  removed (``ticketlab.surgery.slim``) and the smaller state dict saved with the family's key names; load it into
  the family's architecture (``AutoModel.from_config`` or our ResNet) after ``ticketlab.surgery.fit_to_state``
  (transformers 5 no longer stores per-layer pruned heads in a config, so plain ``from_pretrained`` cannot).
- ``nm`` (N:M tickets): the state dict plus, in its metadata, the N:M layers; ``semi_structured(model)`` turns
  those Linear layers into ``torch.sparse`` semi-structured (2:4) tensors for GPU kernels (fp16/bf16, CUDA).
- ``onnx``: the ticket (slim for a structured ticket, masked otherwise) for ONNX Runtime, batch axis dynamic,
  checked there on the spot (``ticketlab.onnx_export``).
- ``compressed``: only the kept values of every masked tensor plus its bitmask (``np.packbits``), other
  tensors dense, in one safetensors file; :func:`load_compressed` (safetensors + numpy, no ticketlab needed
  beyond this function) restores the dense state dict. ``compressed-tensors`` is not used: it dropped its
  sparse-bitmask compressor after 0.14, and the transformers pinned here needs ≥ 0.15 and ignores sparsity.
Every export is loaded back and its outputs compared with ticketlab's model on a random batch.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ticketlab.config import parse_config
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.fileio import honour_umask, read_json
from ticketlab.masks import Mask
from ticketlab.models.base import TicketModel, build_model
from ticketlab.models.hf import POOLER_OPTIONAL
from ticketlab.onnx_export import export_onnx
from ticketlab.paths import IMP, RunPaths
from ticketlab.program_export import export_program
from ticketlab.pruning.base import PRUNING_METHODS
from ticketlab.runfolders import load_theta_p
from ticketlab.surgery import fit_to_state, slim

FORMATS = ("state_dict", "hf", "compressed", "slim", "nm", "onnx", "pt2")
STRUCTURED = ("channel", "coupled_channel", "head_ffn")  # pruning scopes whose groups ``slim`` removes physically
CNN_HEAD = {"head.weight": "fc.weight", "head.bias": "fc.bias"}  # torchvision's classifier names


def structured_ticket(config: Any) -> bool:
    """Whether ``slim`` removes this run's pruned groups: a structured method, or a refilled unstructured one."""
    return PRUNING_METHODS.get(config.prune.method).scope in STRUCTURED or config.prune.structure == "channel_refill"


def ticket_model(run_dir: Path, k: int, rewound: bool = False) -> tuple[TicketModel, Mask, dict[str, Any]]:
    """The ticket of round ``k``: trained weights θ ⊙ m (default) or θp ⊙ m (``rewound``), with its mask."""
    paths = RunPaths(run_dir)
    if k not in paths.finished_rounds():
        raise TicketlabError(f"{paths.root.name} has no finished round {k}; finished: {paths.finished_rounds()}")
    config = parse_config(read_json(paths.config))
    mask = Mask.load(paths.mask(IMP, k))
    metrics = read_json(paths.metrics(IMP, k))
    if rewound:
        state = load_theta_p(paths.root)
    elif paths.weights(k).is_file():
        from ticketlab.tensorfiles import load_tensors

        state = load_tensors(paths.weights(k))[0]
    else:
        raise TicketlabError(f"the trained weights of round {k} were not kept (keep: needed keeps round 0 and the "
                             "last round); export the last round, use --rewound, or re-run with keep: all")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 2
    model = build_model(config.model.name, num_classes, config.model.options, seed=config.seed,
                        normalize=config.model.normalize)
    model.load_state_dict(state)
    mask.apply_(model)
    return model.eval(), mask, {"config": config, "metrics": metrics}


def _hf_core(model: TicketModel) -> torch.nn.Module | None:
    core = getattr(model.backbone, "model", None)
    return core if hasattr(core, "save_pretrained") else None


def original_keys(model: TicketModel) -> dict[str, torch.Tensor]:
    """The state dict under the family's own key names."""
    state = model.state_dict()
    if _hf_core(model) is not None:
        return {k.removeprefix("backbone.model."): v for k, v in state.items() if k.startswith("backbone.model.")} | {
            f"classifier.{k.removeprefix('head.')}": v for k, v in state.items() if k.startswith("head.")}
    return {CNN_HEAD.get(k, k.removeprefix("backbone.")): v for k, v in state.items()}


def save_compressed(path: Path, state: dict[str, torch.Tensor], mask: Mask, key_of: dict[str, str]) -> None:
    tensors, meta = {}, {}
    masked = {key_of[n]: keep for n, keep in mask.tensors.items()}
    for key, value in state.items():
        keep = masked.get(key)
        if keep is None:
            tensors[key] = value.contiguous()
            continue
        tensors[f"{key}.__values"] = value.flatten()[keep.flatten()].contiguous()
        tensors[f"{key}.__bitmask"] = torch.from_numpy(np.packbits(keep.flatten().numpy()))
        meta[key] = json.dumps({"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")})
    save_file(tensors, str(path), metadata={"format": "ticketlab-bitmask-v1", **meta})


def load_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """Dense state dict from a ``compressed`` export (safetensors + numpy only)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    out = {k: v for k, v in tensors.items() if not k.endswith((".__values", ".__bitmask"))}
    for key, info in meta.items():
        if key == "format":
            continue
        spec = json.loads(info)
        numel = int(np.prod(spec["shape"]))
        keep = torch.from_numpy(np.unpackbits(tensors[f"{key}.__bitmask"].numpy(), count=numel).astype(bool))
        dense = torch.zeros(numel, dtype=getattr(torch, spec["dtype"]))
        dense[keep] = tensors[f"{key}.__values"]
        out[key] = dense.view(spec["shape"])
    return out


def example_inputs(model: TicketModel) -> torch.Tensor:
    """A seeded batch the model accepts: token ids for text encoders, else images (at the model's size)."""
    gen = torch.Generator().manual_seed(0)
    core = _hf_core(model)
    if getattr(model.backbone, "input_name", None) == "input_ids":
        return torch.randint(1, core.config.vocab_size, (2, 12), generator=gen)
    size = getattr(core.config, "image_size", 32) if core is not None else 32
    return torch.randn(2, 3, size, size, generator=gen)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def export_ticket(run_dir: Path, k: int, out: Path, formats: list[str], rewound: bool = False) -> list[dict[str, Any]]:
    """Write each format under ``out``, load it back, compare outputs; one row per file with its size."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown export format {bad[0]!r}; formats: {', '.join(FORMATS)}")
    model, mask, info = ticket_model(run_dir, k, rewound)
    scope = PRUNING_METHODS.get(info["config"].prune.method).scope
    structured = structured_ticket(info["config"])
    if "slim" in formats and not structured:
        raise ConfigError(f"format slim needs a structured ticket (channel_*, coupled_channel_*, head_ffn_* methods "
                          "or prune.structure channel_refill); this run used "
                          f"{info['config'].prune.method!r}: export state_dict, compressed" +
                          (" or hf" if _hf_core(model) is not None else ""))
    if "nm" in formats and not scope.startswith("nm_"):
        raise ConfigError(f"format nm needs an N:M ticket (nm_* methods); this run used {info['config'].prune.method!r}")
    if "hf" in formats and _hf_core(model) is None:
        supported = ["state_dict", "compressed", "onnx", "pt2", *(["slim"] if structured else []),
                     *(["nm"] if scope.startswith("nm_") else [])]
        raise ConfigError(f"format hf needs a Hugging Face model family; {info['config'].model.name!r} supports "
                          f"{', '.join(supported)}")
    out.mkdir(parents=True, exist_ok=True)
    keys = original_keys(model)
    key_of = dict(zip(model.state_dict(), keys, strict=True))
    x = example_inputs(model)
    with torch.no_grad():
        reference = model(x)
    dense_path = out / "dense_reference.safetensors"
    save_file({k: v.contiguous() for k, v in keys.items()}, str(dense_path))
    rows = []
    for fmt in formats:
        if fmt == "state_dict":
            path = out / "ticket.safetensors"
            save_file({k: v.contiguous() for k, v in keys.items()}, str(path))
            restored = load_file(str(path))
        elif fmt == "slim":
            path = out / "ticket.slim.safetensors"
            small = slim(model, mask)
            save_file({k: v.contiguous() for k, v in original_keys(small).items()}, str(path),
                      metadata={"format": "ticketlab-slim-v1", "method": info["config"].prune.method})
            restored = load_file(str(path))
        elif fmt == "nm":
            path = out / "ticket.nm.safetensors"
            layers = [key_of[n] for n in mask.names() if n.endswith(".weight")]
            save_file({k: v.contiguous() for k, v in keys.items()}, str(path),
                      metadata={"format": "ticketlab-nm-v1", "pattern": scope.removeprefix("nm_").replace("_", ":"),
                                "layers": json.dumps(layers)})
            restored = load_file(str(path))
        elif fmt == "compressed":
            path = out / "ticket.compressed.safetensors"
            save_compressed(path, keys, mask, key_of)
            restored = load_compressed(path)
        elif fmt in ("onnx", "pt2"):
            path = out / f"ticket.{fmt}"
            write = export_onnx if fmt == "onnx" else export_program
            diff = write(slim(model, mask) if structured else model, x, path)
            rows.append({"format": fmt, "path": str(path), "bytes": _size(path),
                         "dense_bytes": dense_path.stat().st_size, "max_abs_diff": diff})
            continue
        else:
            path = out / "hf"
            source = info["config"].model.options.get("path")
            with_pooler(_hf_core(model), source).save_pretrained(path)
            for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                         "special_tokens_map.json"):
                if source and (Path(source) / name).is_file():
                    shutil.copy(Path(source) / name, path / name)
            restored = None
        rows.append({"format": fmt, "path": str(path), "bytes": _size(path), "dense_bytes": dense_path.stat().st_size,
                     "max_abs_diff": _check(model, fmt, restored, path, key_of, x, reference)})
    dense_path.unlink()
    for row in rows:
        honour_umask(Path(row["path"]))
    return rows


def _check(model: TicketModel, fmt: str, restored: dict[str, torch.Tensor] | None, path: Path,
           key_of: dict[str, str], x: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest output difference between the export, loaded back, and ticketlab's model (must be ~0)."""
    with torch.no_grad():
        if fmt == "hf":
            from transformers import AutoModel

            loaded, loading = AutoModel.from_pretrained(path, output_loading_info=True)
            if loading["missing_keys"] or loading["unexpected_keys"]:
                raise TicketlabError(f"plain from_pretrained of the hf export reports missing "
                                     f"{loading['missing_keys'][:3]} / unexpected {loading['unexpected_keys'][:3]} keys")
            loaded = loaded.eval()
            name = "input_ids" if x.dtype == torch.long else "pixel_values"
            ours = _hf_core(model)(**{name: x}).last_hidden_state
            diff = (loaded(**{name: x}).last_hidden_state - ours).abs().max()
        else:
            clone = copy.deepcopy(model)
            names = dict(zip(original_keys(clone), clone.state_dict(), strict=True))
            ours = {names[key]: value for key, value in restored.items()}
            if fmt == "slim":
                fit_to_state(clone, ours)
            clone.load_state_dict(ours)
            diff = (clone(x) - reference).abs().max()
    if float(diff) > 1e-4:
        raise TicketlabError(f"export {fmt} does not reproduce the ticket (max output difference {float(diff):.2e})")
    return float(diff)


def with_pooler(core: torch.nn.Module, source: str | None) -> torch.nn.Module:
    """The model as plain ``AutoModel.from_pretrained`` builds it: ticketlab builds BERT/ViT backbones without the
    pooler their features do not use, so the export adds one — the source checkpoint's when it has one, else a
    seeded fresh one (never pruned, unused by the ticket's outputs) — and no key is reported missing on load."""
    if getattr(core, "pooler", True) is not None or core.config.model_type not in POOLER_OPTIONAL:
        return core
    torch.manual_seed(0)
    full = type(core)(core.config)
    full.load_state_dict(core.state_dict(), strict=False)
    if source:
        from transformers import AutoModel

        try:
            pooler = AutoModel.from_pretrained(source).pooler
            if pooler is not None:
                full.pooler.load_state_dict(pooler.state_dict())
        except (OSError, ValueError):
            pass  # the checkpoint cannot be read again here: the seeded pooler stays
    return full


def semi_structured(model: torch.nn.Module, layers: list[str] | None = None) -> torch.nn.Module:
    """Turn the (N:M-pruned) Linear weights of ``model`` into semi-structured sparse tensors, in place, so that
    CUDA runs them with 2:4 kernels (the model must be on a CUDA device in fp16 or bf16)."""
    from torch.sparse import to_sparse_semi_structured

    if not torch.cuda.is_available():
        raise TicketlabError("semi-structured (2:4) kernels need a CUDA GPU; on CPU use the nm export as a state dict")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (layers is None or f"{name}.weight" in layers):
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return model
