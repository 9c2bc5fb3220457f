"""Run a Hugging Face ViT with EViT token reduction, or on a chosen subset of patches.

The adapter (ToMe's pattern): :func:`patch_vit` turns a ``vit`` backbone into a :class:`PatchViT` in
place; the host module (``models.hf``) never imports this one.

Written against ``transformers`` 5 ViT modules (``embeddings.patch_embeddings.projection``,
``layers[i].{layernorm_before, attention, layernorm_after, mlp}``); other layouts get a clear error.
Attention maps need eager attention, which :func:`use_eager_attention` switches on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models.hf import ViTBackbone
from ticketlab.patches.tokens import cls_attention, default_reduction_layers, keep_count, top_tokens


def use_eager_attention(vit: nn.Module) -> None:
    vit.config._attn_implementation = "eager"


def _check(vit: nn.Module) -> None:
    if not hasattr(vit, "layers") or not hasattr(vit.embeddings, "patch_embeddings"):
        raise TicketlabError(f"{type(vit).__name__} is not a transformers>=5 ViTModel; patch tickets need one")


def embed_patches(vit: nn.Module, pixel_values: torch.Tensor, patch_indices: torch.Tensor | None) -> torch.Tensor:
    """[CLS] + (selected) patch embeddings with their own positional embeddings.

    With ``patch_indices`` [B, K] only those patches are projected, so the compute really drops.
    """
    emb = vit.embeddings
    proj: nn.Conv2d = emb.patch_embeddings.projection
    p = proj.kernel_size[0]
    patches = F.unfold(pixel_values, kernel_size=p, stride=p).transpose(1, 2)  # [B, N, C*p*p]
    pos = emb.position_embeddings[:, 1:].expand(len(pixel_values), -1, -1)
    if patch_indices is not None:
        patches = torch.gather(patches, 1, patch_indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        pos = torch.gather(pos, 1, patch_indices.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
    tokens = F.linear(patches, proj.weight.flatten(1), proj.bias) + pos
    cls = (emb.cls_token + emb.position_embeddings[:, :1]).expand(len(pixel_values), -1, -1)
    return emb.dropout(torch.cat([cls, tokens], dim=1))


def _layer(layer: nn.Module, hidden: torch.Tensor, keep: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ViT block; with ``keep``, drop all but the ``keep`` patches [CLS] attends to most (after attention)."""
    attn_out, weights = layer.attention(layer.layernorm_before(hidden), None)
    hidden = layer.dropout(attn_out) + hidden
    kept = None
    if keep is not None:
        if weights is None:
            raise TicketlabError("token reduction needs attention maps: call use_eager_attention(model) first")
        kept = top_tokens(cls_attention(weights), keep)
        patches = torch.gather(hidden[:, 1:], 1, kept.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        hidden = torch.cat([hidden[:, :1], patches], dim=1)
    return layer.dropout(layer.mlp(layer.layernorm_after(hidden))) + hidden, kept


def vit_forward(vit: nn.Module, pixel_values: torch.Tensor, keep_rate: float = 1.0,
                reduction_layers: tuple[int, ...] = (), patch_indices: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] features and, per image, the original indices of the patches alive after the last reduction."""
    _check(vit)
    hidden = embed_patches(vit, pixel_values, patch_indices)
    num_patches = vit.embeddings.patch_embeddings.num_patches
    alive = patch_indices if patch_indices is not None else torch.arange(num_patches).expand(len(pixel_values), -1)
    for i, layer in enumerate(vit.layers):
        keep = keep_count(hidden.shape[1] - 1, keep_rate) if (i in reduction_layers and keep_rate < 1) else None
        hidden, kept = _layer(layer, hidden, keep)
        if kept is not None:
            alive = torch.gather(alive, 1, kept)
    return vit.layernorm(hidden)[:, 0], alive


class PatchViT(ViTBackbone):
    """A ViT backbone that takes images or ``(images, patch_indices)`` and can prune tokens EViT-style.

    After a forward pass with reduction, ``last_alive`` holds the patches that survived the last
    reduction (the image's ticket).
    """

    keep_rate: float = 1.0
    reduction_layers: tuple[int, ...] = ()
    last_alive: torch.Tensor | None = None

    def set_token_reduction(self, keep_rate: float, layers: tuple[int, ...] | None = None) -> None:
        keep_count(1, keep_rate)  # validates the rate
        use_eager_attention(self.model)
        self.keep_rate = keep_rate
        self.reduction_layers = tuple(layers) if layers else default_reduction_layers(len(self.model.layers))

    def forward(self, inputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixel_values, patches = inputs if isinstance(inputs, tuple) else (inputs, None)
        if self.keep_rate >= 1.0 and patches is None:
            return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]
        features, self.last_alive = vit_forward(self.model, pixel_values, self.keep_rate, self.reduction_layers,
                                                patches)
        return features


def patch_vit(backbone: nn.Module) -> PatchViT:
    """Give a ``vit`` backbone token reduction and patch-subset inputs, in place (weights untouched)."""
    if isinstance(backbone, PatchViT):
        return backbone
    if not isinstance(backbone, ViTBackbone):
        raise ConfigError(f"patch tickets need a ViT ('vit' model), got a {type(backbone).__name__} backbone")
    backbone.__class__ = PatchViT
    return backbone
