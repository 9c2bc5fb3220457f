"""ViLT and VisualBERT from ``transformers`` behind the same inputs, heads and features as ``uniter``.

A small adapter per host model (the ToMe pattern): the pre-trained modules are used unchanged, the
word-embedding table is cut to the benchmark's compact vocabulary, and the image stream is fed
as each model expects it — VisualBERT gets the region/patch features as ``visual_embeds`` (its own
``visual_projection`` maps them); ViLT gets ``image_embeds`` from a linear projection of the features
plus their boxes, standing in for its patch-pixel convolution (identical for patch features, whose
feature is the patch's pixels). Adversarial δ is added to the word embeddings and to those image
inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketlab.models.base import MODELS, Backbone
from ticketlab.vl.model import ImageEmbeddings, VLBackbone, VLFeatures, compact_word_embeddings, load_text_model
from ticketlab.vl.text import VLTokenizer, tokenizer_for


class HFVLBackbone(VLBackbone):
    def __init__(self, model: nn.Module, kind: str, feature_dim: int, tokenizer: VLTokenizer, pooling: str) -> None:
        super().__init__(feature_dim, tokenizer, pooling)
        self.model = model
        self.kind = kind
        cfg = model.config
        if kind == "vilt":
            self.image_embeddings = ImageEmbeddings(feature_dim, cfg.hidden_size, cfg.layer_norm_eps,
                                                    cfg.hidden_dropout_prob)

    @property
    def text_embedding_owner(self) -> nn.Module:
        return self.model.embeddings.text_embeddings if self.kind == "vilt" else self.model.embeddings

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.text_embedding_owner.word_embeddings

    def embed(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, feats, boxes = self.checked(inputs)
        image = self.image_embeddings.project(feats, boxes) if self.kind == "vilt" else feats
        return self.word_embeddings(ids), image

    def encode(self, word: torch.Tensor, image: torch.Tensor, inputs: dict[str, torch.Tensor]) -> VLFeatures:
        text_mask, image_mask = (m.long() for m in self.masks(inputs))
        if self.kind == "vilt":
            out = self.model(inputs_embeds=word, attention_mask=text_mask, image_embeds=image, pixel_mask=image_mask)
        else:
            out = self.model(inputs_embeds=word, attention_mask=text_mask, visual_embeds=image,
                             visual_attention_mask=image_mask)
        return self.features(out.last_hidden_state, inputs, self.model.pooler)


def _build(kind: str, model_cls: Any, config_cls: Any, path: str | None, config: dict[str, Any] | None,
           tokenizer: str | None, image_feature_dim: int, random_init: bool, pooling: str,
           config_defaults: dict[str, Any]) -> Backbone:
    text = tokenizer_for(tokenizer or path)
    model = load_text_model(model_cls, config_cls, path, None if config is None else {**config_defaults, **config},
                            text, random_init)
    backbone = HFVLBackbone(model, kind, image_feature_dim, text, pooling)
    compact_word_embeddings(backbone.text_embedding_owner, model.config, text)
    return Backbone(backbone, model.config.hidden_size, "transformer")


@MODELS.register("visualbert")
def visualbert(path: str | None = None, config: dict[str, Any] | None = None, tokenizer: str | None = None,
               image_feature_dim: int = 192, random_init: bool = False, pooling: str = "cls") -> Backbone:
    """VisualBERT (single-stream, region features) from a local checkpoint or a random ``config``."""
    from transformers import VisualBertConfig, VisualBertModel

    return _build("visualbert", VisualBertModel, VisualBertConfig, path, config, tokenizer, image_feature_dim,
                  random_init, pooling, {"visual_embedding_dim": image_feature_dim})


@MODELS.register("vilt")
def vilt(path: str | None = None, config: dict[str, Any] | None = None, tokenizer: str | None = None,
         image_feature_dim: int = 192, random_init: bool = False, pooling: str = "cls") -> Backbone:
    """ViLT (single-stream, patch inputs) from a local checkpoint or a random ``config``."""
    from transformers import ViltConfig, ViltModel

    return _build("vilt", ViltModel, ViltConfig, path, config, tokenizer, image_feature_dim, random_init, pooling,
                  {})
