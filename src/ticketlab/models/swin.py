"""Swin Transformer (Liu et al., ICCV 2021) through Hugging Face's ``SwinModel``: an ordinary image backbone.

``swin`` loads a local ``save_pretrained`` folder (e.g. ``microsoft/swin-tiny-patch4-window7-224`` saved
locally; loading is checked as for every Hugging Face model) or builds one from ``config`` with random weights
(Swin-T: ``embed_dim: 96, depths: [2, 2, 6, 2], num_heads: [3, 6, 12, 24], window_size: 7, patch_size: 4``).
Features are Swin's own classification features: the mean of the last stage's tokens after the final LayerNorm.

Patch-ticket students (Shen et al., IJCAI 2023) get their masking adapter from ``ticketlab.patches.swin``
(``patch_swin``); this host never imports it (ToMe's rule). ``empty_windows`` is only read by that adapter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models.base import MODELS, Backbone
from ticketlab.models.hf import HFBackbone, hf, input_defaults

EMPTY_WINDOW_RULES = ("error", "zero")


class SwinBackbone(HFBackbone):
    """Mean of the last-stage tokens (after the final LayerNorm): what Swin's classifier reads."""

    def __init__(self, model: nn.Module, empty_windows: str = "error") -> None:
        super().__init__(model, "mean")
        self.empty_windows = empty_windows  # what a patch selection leaving a window empty does (adapter)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if isinstance(inputs, tuple):
            raise TicketlabError("a patch subset needs the patch adapter: ticketlab.patches.swin.patch_swin(backbone)")
        return self.model(pixel_values=inputs).last_hidden_state.mean(1)


@MODELS.register("swin")
def swin(path: str | None = None, config: dict[str, Any] | None = None, attn_implementation: str | None = None,
         allow_missing: list[str] | None = None, random_init: bool = False, empty_windows: str = "error") -> Backbone:
    """Swin Transformer (Hugging Face SwinModel): mean of the last-stage tokens. ``empty_windows`` (patch-ticket
    students): error (refuse a selection leaving an attention window without a kept patch) or zero."""
    if empty_windows not in EMPTY_WINDOW_RULES:
        raise ConfigError(f"model.options.empty_windows must be error or zero, got {empty_windows!r}")
    built = hf(path, config, "swin", "mean", attn_implementation, allow_missing, random_init)
    model = built.module.model
    if model.config.model_type != "swin":
        raise ConfigError(f"{path} holds a {model.config.model_type!r} model, not Swin (v1); use model 'hf' for it")
    return Backbone(SwinBackbone(model, empty_windows), built.feature_dim, built.family, built.normalization)


swin.input_defaults = input_defaults  # type: ignore[attr-defined]
