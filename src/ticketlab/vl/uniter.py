"""The ``uniter`` model family: a UNITER-style backbone (:mod:`ticketlab.vl.model`) from a BERT-family folder (the
shipped MiniLM by default), from random BERT sizes, or from a released UNITER checkpoint
(:mod:`ticketlab.vl.uniter_checkpoint`)."""

from __future__ import annotations

from typing import Any

from ticketlab.errors import ConfigError
from ticketlab.models.base import MODELS, Backbone, pretrained_by_default
from ticketlab.registry import bounds
from ticketlab.vl.model import UniterBackbone, compact_word_embeddings, load_text_model
from ticketlab.vl.text import tokenizer_for
from ticketlab.vl.uniter_checkpoint import base_options, uniter_from_checkpoint


@MODELS.register("uniter")
@pretrained_by_default
@bounds(num_layers=(1, None), image_feature_dim=(1, None))
def uniter(path: str | None = None, config: dict[str, Any] | str | None = None, num_layers: int | None = None,
           tokenizer: str | None = None, image_feature_dim: int | None = None, random_init: bool = False,
           attn_implementation: str = "sdpa", pooling: str = "cls", vocabulary: str = "benchmark",
           checkpoint: str | None = None, text_checkpoint: str | None = None) -> Backbone:
    """UNITER-style model initialised from a BERT-family checkpoint (default: the shipped MiniLM-L6).

    ``config`` builds that BERT architecture with random weights instead (tests); ``num_layers`` keeps
    the checkpoint's first layers (a small-scale simplification); ``random_init`` keeps the
    checkpoint's architecture but not its weights (θ0). ``checkpoint`` loads a released UNITER file
    (uniter-base.pt) instead, with ``config`` its JSON and ``tokenizer`` bert-base-cased's folder
    (:mod:`ticketlab.vl.uniter_checkpoint`); ``image_feature_dim`` (default 192) then comes from the file;
    ``text_checkpoint`` (its bert-base-cased folder) is only read by the mask-on-BERT baseline.
    """
    from transformers import BertConfig, BertModel

    from ticketlab.models.hf import minilm_path

    if checkpoint is not None:
        if path is not None:
            raise ConfigError("model.options has both path (a BERT folder) and checkpoint (a UNITER file); keep one")
        core = uniter_from_checkpoint(checkpoint, config, tokenizer, vocabulary, image_feature_dim, random_init,
                                      attn_implementation, pooling)
    else:
        if isinstance(config, str):
            raise ConfigError("model.options.config as a file path needs model.options.checkpoint (a UNITER file); "
                              "give a dict of BERT sizes for random weights")
        text = tokenizer_for(tokenizer or path, vocabulary)
        bert = load_text_model(BertModel, BertConfig, path or minilm_path(), config, text, random_init,
                               attn_implementation=attn_implementation)
        compact_word_embeddings(bert.embeddings, bert.config, text)
        core = UniterBackbone(bert, image_feature_dim or 192, text, pooling)
    bert = core.bert
    if num_layers is not None:
        if not 1 <= num_layers <= len(bert.encoder.layer):
            raise ConfigError(f"model.options.num_layers must be in 1..{len(bert.encoder.layer)}, got {num_layers}")
        bert.encoder.layer = bert.encoder.layer[:num_layers]
        bert.config.num_hidden_layers = num_layers
    return Backbone(core, bert.config.hidden_size, "transformer")


def _uniter_inputs(options: dict[str, Any]) -> dict[str, Any]:
    """A V+L task on disk tokenises with the model's tokenizer and vocabulary."""
    return {"tokenizer": options.get("tokenizer") or options.get("path"),
            "vocabulary": options.get("vocabulary", "benchmark")}


uniter.input_defaults = _uniter_inputs  # type: ignore[attr-defined]
uniter.base_options = base_options  # type: ignore[attr-defined]
