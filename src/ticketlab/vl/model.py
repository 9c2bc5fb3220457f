"""A UNITER-style single-stream V+L transformer over any BERT-family checkpoint, and its task heads.

Text tokens get BERT's word + position + type-0 embeddings; each image region (or patch) gets
``LN(LN(W_f·feature) + LN(W_b·box) + type-1)`` (UNITER's image embedder); both streams are
concatenated and run through the checkpoint's own encoder layers with one padding mask; the pooler
reads [CLS]. The embedding stage and the encoder are separate methods (:meth:`UniterBackbone.embed`,
:meth:`UniterBackbone.encode`) so adversarial training can perturb the embeddings in between.

Inputs are a dict of tensors with a group axis ``G`` (two images for NLVR2, four answers for VCR,
one otherwise): ``text_ids [N, G, L]``, ``image_feats [N, G, R, D]``, ``image_boxes [N, G, R, 7]``,
``image_mask [N, G, R]``. Heads (``answer``, ``choice``, ``pair``, ``pointer``) read :class:`VLFeatures`;
they sit outside ``backbone.*`` and are never pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError, DataError
from ticketlab.models.base import HEADS
from ticketlab.vl.features import BOX_DIM
from ticketlab.vl.text import VLTokenizer

POOLINGS = ("cls", "mean")
PADDING_LOGIT = -1e4  # finite, so softmax/KL over a pointer's padded slots stay NaN-free


@dataclass
class VLFeatures:
    pooled: torch.Tensor  # [N·G, H]
    text_states: torch.Tensor  # [N·G, L, H]
    image_states: torch.Tensor  # [N·G, R, H]
    image_mask: torch.Tensor  # [N·G, R]
    groups: int

    def grouped(self) -> torch.Tensor:
        """Pooled features as ``[N, G, H]``."""
        return self.pooled.view(-1, self.groups, self.pooled.shape[-1])


class ImageEmbeddings(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.feature = nn.Linear(feature_dim, hidden)
        self.feature_norm = nn.LayerNorm(hidden, eps=eps)
        self.box = nn.Linear(BOX_DIM, hidden)
        self.box_norm = nn.LayerNorm(hidden, eps=eps)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def project(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.feature_norm(self.feature(feats)) + self.box_norm(self.box(boxes))

    def finish(self, projected: torch.Tensor, type_embedding: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(projected + type_embedding))


class VLBackbone(nn.Module):
    """What every V+L backbone shares: input checks, the compact vocabulary, pooling, the output features.

    Subclasses provide ``word_embeddings``, ``embed`` (word embeddings and image embeddings, where
    adversarial δ is added) and ``encode``.
    """

    word_embeddings: nn.Embedding

    def __init__(self, feature_dim: int, tokenizer: VLTokenizer, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.options.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.feature_dim = feature_dim
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_id
        self.pooling = pooling

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    def checked(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, image features and boxes with the group axis folded into the batch."""
        missing = {"text_ids", "image_feats", "image_boxes", "image_mask"} - set(inputs)
        if missing:
            raise DataError(f"V+L inputs lack {sorted(missing)}; build them with a vl_* task")
        ids, feats = inputs["text_ids"].flatten(0, 1), inputs["image_feats"].flatten(0, 1)
        if feats.shape[-1] != self.feature_dim:
            raise DataError(f"image features have {feats.shape[-1]} dims but the model expects {self.feature_dim}; "
                            "set model.options.image_feature_dim to 3·patch²")
        if int(ids.max()) >= self.vocab_size:
            raise DataError(f"token id {int(ids.max())} is outside the model's {self.vocab_size}-word vocabulary; "
                            "the task and the model must use the same tokenizer and vocabulary "
                            "(model.options.vocabulary: full for real text)")
        return ids, feats, inputs["image_boxes"].flatten(0, 1)

    def masks(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs["text_ids"].flatten(0, 1) != self.pad_id, inputs["image_mask"].flatten(0, 1)

    def features(self, states: torch.Tensor, inputs: dict[str, torch.Tensor], pooler: nn.Module | None) -> VLFeatures:
        """Split the joint sequence back into streams and pool it ([CLS], or the mean of every valid token)."""
        text_mask, image_mask = self.masks(inputs)
        length = text_mask.shape[1]
        if self.pooling == "mean":
            weights = torch.cat([text_mask, image_mask], dim=1).unsqueeze(-1).to(states.dtype)
            summary = (states * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        else:
            summary = states
        pooled = pooler(summary) if pooler is not None else summary[:, 0]
        return VLFeatures(pooled, states[:, :length], states[:, length:], image_mask, inputs["text_ids"].shape[1])

    def forward(self, inputs: dict[str, torch.Tensor]) -> VLFeatures:
        return self.encode(*self.embed(inputs), inputs)


class UniterBackbone(VLBackbone):
    def __init__(self, bert: nn.Module, feature_dim: int, tokenizer: VLTokenizer, pooling: str = "cls") -> None:
        super().__init__(feature_dim, tokenizer, pooling)
        cfg = bert.config
        self.bert = bert
        self.image_embeddings = ImageEmbeddings(feature_dim, cfg.hidden_size, cfg.layer_norm_eps,
                                                cfg.hidden_dropout_prob)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def embed(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word embeddings ``[N·G, L, H]`` and projected image features ``[N·G, R, H]`` (where δ is added)."""
        ids, feats, boxes = self.checked(inputs)
        return self.word_embeddings(ids), self.image_embeddings.project(feats, boxes)

    def encode(self, word: torch.Tensor, image: torch.Tensor, inputs: dict[str, torch.Tensor]) -> VLFeatures:
        from transformers.masking_utils import create_bidirectional_mask

        embeddings = self.bert.embeddings
        text = embeddings(inputs_embeds=word)  # + position + type 0, LayerNorm, dropout
        type_one = embeddings.token_type_embeddings.weight[1 % embeddings.token_type_embeddings.num_embeddings]
        hidden = torch.cat([text, self.image_embeddings.finish(image, type_one)], dim=1)
        mask = torch.cat(self.masks(inputs), dim=1).long()
        attention = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=mask)
        states = self.bert.encoder(hidden, attention_mask=attention).last_hidden_state
        return self.features(states, inputs, self.bert.pooler)


def compact_word_embeddings(owner: nn.Module, config: Any, tokenizer: VLTokenizer) -> None:
    """Keep only the embedding rows of the benchmark's word pieces (pre-trained rows copied unchanged).

    ``owner`` is the module holding ``word_embeddings`` (BERT's ``embeddings``, ViLT's ``text_embeddings``).
    """
    table = owner.word_embeddings
    if table.num_embeddings <= max(tokenizer.compact_ids):
        raise ConfigError(f"the tokenizer's ids reach {max(tokenizer.compact_ids)} but the checkpoint has "
                          f"{table.num_embeddings} word embeddings; use the checkpoint's own tokenizer")
    compact = nn.Embedding(tokenizer.vocab_size, table.embedding_dim, padding_idx=tokenizer.pad_id)
    with torch.no_grad():
        compact.weight.copy_(table.weight[tokenizer.compact_ids])
    owner.word_embeddings = compact
    config.vocab_size = tokenizer.vocab_size


def load_text_model(model_cls: Any, config_cls: Any, path: str | None, config: dict[str, Any] | None,
                    tokenizer: VLTokenizer, random_init: bool, **kwargs: Any) -> nn.Module:
    """A Hugging Face model from ``path`` (pre-trained), or from ``config`` with random weights sized to the
    tokenizer's ids (the compact vocabulary is cut from it afterwards)."""
    from ticketlab.models.hf import load_auto_model

    if config is None:
        if path is None:
            raise ConfigError(f"{model_cls.__name__} needs model.options.path (a local checkpoint folder) or "
                              "model.options.config (random weights)")
        return load_auto_model(path, {}, None, random_init, kwargs.get("attn_implementation"))[0]
    try:
        return model_cls(config_cls(**{**config, "vocab_size": max(tokenizer.compact_ids) + 1}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad model.options.config for {config_cls.__name__}: {exc}") from exc




# -- heads (never pruned: they live under ``head.``) ---------------------------------------------------
def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """UNITER's classifier: Linear -> GELU -> LayerNorm -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12),
                         nn.Linear(hidden, out_dim))


class AnswerHead(nn.Module):
    """Classification over a closed answer set (VQA, GQA, SNLI-VE, ITM) from the pooled [CLS]."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = mlp(hidden, 2 * hidden, num_classes)

    def forward(self, features: VLFeatures) -> torch.Tensor:
        return self.mlp(features.pooled)


class ChoiceHead(nn.Module):
    """Multiple choice (VCR): one score per (question + answer_g, image) pair, softmax over the G answers."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, features: VLFeatures) -> torch.Tensor:
        return self.score(features.grouped()).squeeze(-1)


class PairHead(nn.Module):
    """Two-image reasoning (NLVR2, UNITER's 'paired' set-up): classify the two [CLS] features concatenated."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = mlp(2 * hidden, 2 * hidden, num_classes)

    def forward(self, features: VLFeatures) -> torch.Tensor:
        grouped = features.grouped()
        if grouped.shape[1] != 2:
            raise DataError(f"the pair head needs 2 images per sample, got {grouped.shape[1]}")
        return self.mlp(grouped.flatten(1))


class PointerHead(nn.Module):
    """Referring expressions (RefCOCO): one logit per image region; padded regions get a very low logit."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, features: VLFeatures) -> torch.Tensor:
        logits = self.score(features.image_states).squeeze(-1)
        return logits.masked_fill(~features.image_mask, PADDING_LOGIT)


def _head_factory(cls: type[nn.Module]) -> Callable[[int, int, torch.Generator], nn.Module]:
    def factory(dim: int, classes: int, generator: torch.Generator) -> nn.Module:
        return cls(dim, classes)

    factory.__doc__, factory.__qualname__ = cls.__doc__, f"{cls.__name__}.factory"
    return factory


for _name, _cls in (("answer", AnswerHead), ("choice", ChoiceHead), ("pair", PairHead), ("pointer", PointerHead)):
    HEADS.register(_name)(_head_factory(_cls))
