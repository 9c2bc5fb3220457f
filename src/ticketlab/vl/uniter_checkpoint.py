"""The released UNITER checkpoints (Chen et al. 2020, github ChenRocks/UNITER) as ticketlab's ``uniter`` backbone.

UNITER's ``UniterModel`` (saved under ``uniter.`` by its pre-training and fine-tuning wrappers) is BERT plus an
image embedder; its text embeddings, encoder and pooler use BERT's module names, so they load into Hugging
Face's ``BertModel`` unchanged, and its image embedder ``LN(LN(img_linear f) + LN(pos_linear box) + type_1)``
is :class:`~ticketlab.vl.model.ImageEmbeddings` (``project`` + ``finish``) with other names:

    img_linear -> feature, img_layer_norm -> feature_norm, pos_linear -> box, pos_layer_norm -> box_norm,
    LayerNorm -> LayerNorm

UNITER builds BERT from ``config/uniter-base.json`` (the sizes of bert-base-cased: vocabulary 28996), so the
architecture comes from that config and the weights from the ``.pt`` file, which is read without unpickling
anything but tensors. Unused: the pre-training heads (``cls.``, ``feat_regress.``, ``region_classifier.``,
``itm_output.``), a fine-tuned task head, and ``img_embeddings.mask_embedding`` (masked-region modelling
only; fine-tuning never masks features). Every backbone weight must come from the file: a load that would
leave one at its random initialisation is refused, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ticketlab.checkpoints import LoadReport, show_keys
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.progress import log_line
from ticketlab.tensorfiles import load_state_dict
from ticketlab.vl.model import UniterBackbone, compact_word_embeddings
from ticketlab.vl.text import tokenizer_for

WRAPPERS = ("module.", "uniter.")  # DistributedDataParallel, then UNITER's pre-training / task wrappers
RENAMES = (  # UNITER module prefix -> ticketlab's (order: most specific first)
    ("img_embeddings.img_linear.", "image_embeddings.feature."),
    ("img_embeddings.img_layer_norm.", "image_embeddings.feature_norm."),
    ("img_embeddings.pos_linear.", "image_embeddings.box."),
    ("img_embeddings.pos_layer_norm.", "image_embeddings.box_norm."),
    ("img_embeddings.LayerNorm.", "image_embeddings.LayerNorm."),
    ("embeddings.", "bert.embeddings."),
    ("encoder.", "bert.encoder."),
    ("pooler.", "bert.pooler."),
)
ARCHITECTURE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
BUFFERS = ("position_ids", "token_type_ids")  # saved by some BERT versions; rebuilt by the model, never loaded
_REPORTED: set[str] = set()  # checkpoints whose load report this process already logged


def uniter_name(key: str, prefixed: bool) -> str | None:
    """ticketlab's name for a UNITER key, or None for a weight outside ``UniterModel``'s backbone (heads).

    ``prefixed``: the dump keeps ``UniterModel`` under ``uniter.`` (so a key without it is a head); an
    unprefixed dump is ``UniterModel``'s own state dict. LayerNorm ``gamma``/``beta`` (old dumps) are mapped
    to ``weight``/``bias`` as UNITER's own ``from_pretrained`` does.
    """
    while key.startswith("module."):
        key = key[len("module."):]
    if prefixed:
        if not key.startswith("uniter."):
            return None
        key = key[len("uniter."):]
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return next((new + key[len(old):] for old, new in RENAMES if key.startswith(old)), None)


def map_uniter_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """UNITER's tensors under ticketlab's backbone names, and the keys that map to none (reported unused)."""
    prefixed = any(k.removeprefix("module.").startswith("uniter.") for k in state)
    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, tensor in state.items():
        name = uniter_name(key, prefixed)
        if name is None or name.endswith(BUFFERS):
            unused.append(key)
        else:
            mapped[name] = tensor
    return mapped, unused


def read_uniter_config(config: str | dict[str, Any] | None) -> dict[str, Any]:
    """UNITER's config (``config/uniter-base.json`` or the same keys as a dict), checked for the architecture."""
    if config is None:
        raise ConfigError("model.options.checkpoint needs model.options.config: UNITER's config JSON "
                          "(config/uniter-base.json of ChenRocks/UNITER) or the same keys as a dict")
    if isinstance(config, str):
        try:
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not read the UNITER config {config} ({exc}); give the path of "
                              "config/uniter-base.json") from exc
    if not isinstance(config, dict):
        raise ConfigError("model.options.config must be a UNITER config JSON path or a dict")
    lacking = [k for k in ARCHITECTURE if k not in config]
    if lacking:
        raise ConfigError(f"the UNITER config lacks {', '.join(lacking)}; use config/uniter-base.json "
                          "(or uniter-large.json) of ChenRocks/UNITER")
    return dict(config)


def checkpoint_sizes(mapped: dict[str, torch.Tensor], path: str, unused: list[str]) -> tuple[int, int]:
    """(hidden size, image feature size) the checkpoint was trained with, read off its tensors."""
    words, image = mapped.get("bert.embeddings.word_embeddings.weight"), mapped.get("image_embeddings.feature.weight")
    if words is None and image is None:
        raise TicketlabError(f"checkpoint {path} holds no UNITER weights (first keys: {show_keys(unused, 3)}); "
                             "give a UNITER checkpoint (uniter-base.pt), or a BERT folder as model.options.path")
    if image is None:
        raise TicketlabError(f"checkpoint {path} has no image embedder (uniter.img_embeddings.img_linear.weight); "
                             "give a UNITER checkpoint, not a text-only BERT")
    hidden = int(words.shape[-1]) if words is not None else int(image.shape[0])
    return hidden, int(image.shape[1])


def load_uniter_state(core: torch.nn.Module, mapped: dict[str, torch.Tensor], unused: list[str],
                      path: str) -> LoadReport:
    """Load ``mapped`` into ``core`` (a full-vocabulary :class:`UniterBackbone`); refuse any backbone weight
    it would leave at random init, and UNITER weights the configured architecture has no place for."""
    wanted = core.state_dict()
    report = LoadReport(unused=list(unused))
    report.shape_mismatch = [f"{k} {tuple(v.shape)}->{tuple(wanted[k].shape)}" for k, v in mapped.items()
                             if k in wanted and v.shape != wanted[k].shape]
    report.loaded = [k for k, v in mapped.items() if k in wanted and v.shape == wanted[k].shape]
    report.missing = [k for k in wanted if k not in mapped]
    extra = [k for k in mapped if k not in wanted]
    if report.missing or report.shape_mismatch:
        what = "; ".join(f"{label} {len(keys)}: {show_keys(keys)}" for label, keys in
                         (("missing", report.missing), ("shape mismatch", report.shape_mismatch)) if keys)
        raise TicketlabError(f"UNITER checkpoint {path} would leave backbone weights at random init ({what}); "
                             "use the checkpoint that model.options.config describes (uniter-base.pt with "
                             "uniter-base.json)")
    if extra:
        raise TicketlabError(f"UNITER checkpoint {path} has {len(extra)} weights the configured architecture "
                             f"lacks ({show_keys(extra)}); model.options.config (e.g. num_hidden_layers) does "
                             "not describe this checkpoint")
    core.load_state_dict({k: mapped[k] for k in report.loaded})
    params = dict(core.named_parameters())
    report.parameters_total = len(params)
    report.parameters_loaded = sum(1 for k in report.loaded if k in params)
    return report


def uniter_from_checkpoint(checkpoint: str, config: str | dict[str, Any] | None, tokenizer: str | None,
                           vocabulary: str, image_feature_dim: int | None, random_init: bool,
                           attn_implementation: str, pooling: str) -> UniterBackbone:
    """A :class:`UniterBackbone` with UNITER's weights (or, ``random_init``, its architecture with fresh ones),
    the word-embedding table then cut to the tokenizer's vocabulary like every ``uniter`` model."""
    from transformers import BertConfig, BertModel

    if tokenizer is None:
        raise ConfigError("model.options.checkpoint needs model.options.tokenizer: the folder of the checkpoint's "
                          "tokenizer (bert-base-cased for the released UNITER)")
    settings = read_uniter_config(config)
    mapped, unused = map_uniter_keys(load_state_dict(Path(checkpoint)))
    hidden, feature_dim = checkpoint_sizes(mapped, checkpoint, unused)
    if hidden != settings["hidden_size"]:
        raise ConfigError(f"UNITER checkpoint {checkpoint} has hidden size {hidden} but model.options.config says "
                          f"{settings['hidden_size']}; use the config of that checkpoint (base 768, large 1024)")
    if image_feature_dim is not None and image_feature_dim != feature_dim:
        raise ConfigError(f"model.options.image_feature_dim is {image_feature_dim} but UNITER checkpoint {checkpoint} "
                          f"embeds {feature_dim}-d region features; remove the option or set it to {feature_dim}")
    text = tokenizer_for(tokenizer, vocabulary)
    try:
        bert = BertModel(BertConfig(**{"layer_norm_eps": 1e-12, **settings},
                                    attn_implementation=attn_implementation))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad UNITER config for BERT: {str(exc).splitlines()[0][:200]}") from exc
    core = UniterBackbone(bert, feature_dim, text, pooling)
    if not random_init:
        report = load_uniter_state(core, mapped, unused, checkpoint)
        if checkpoint not in _REPORTED:
            _REPORTED.add(checkpoint)
            log_line(f"UNITER θp from {checkpoint}: {report.summary()}")
    compact_word_embeddings(bert.embeddings, bert.config, text)
    return core


def write_tiny_uniter(folder: Path, filename: str = "uniter-tiny.pt", feature_dim: int = 192) -> dict[str, str]:
    """A tiny random checkpoint in UNITER's own key layout (with its pre-training heads) and its config JSON, for
    ``--smoke``; the tokenizer is the shipped MiniLM one (30522 word pieces). Returns the model options."""
    from transformers import BertConfig, BertModel

    from ticketlab.models.hf import minilm_path

    settings = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                "initializer_range": 0.02}
    hidden = settings["hidden_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {f"uniter.{k}": v for k, v in BertModel(BertConfig(**settings)).state_dict().items()}
        image = {"img_linear.weight": torch.randn(hidden, feature_dim) * 0.02, "img_linear.bias": torch.zeros(hidden),
                 "pos_linear.weight": torch.randn(hidden, 7) * 0.02, "pos_linear.bias": torch.zeros(hidden),
                 "mask_embedding.weight": torch.randn(2, feature_dim)}
        for norm in ("img_layer_norm", "pos_layer_norm", "LayerNorm"):
            image |= {f"{norm}.weight": torch.ones(hidden), f"{norm}.bias": torch.zeros(hidden)}
        state |= {f"uniter.img_embeddings.{k}": v for k, v in image.items()}
        state |= {"cls.predictions.bias": torch.zeros(settings["vocab_size"]),
                  "itm_output.weight": torch.randn(2, hidden), "feat_regress.weight": torch.randn(feature_dim, hidden),
                  "region_classifier.net.3.bias": torch.zeros(1601)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / filename)
    (folder / "uniter-tiny.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return {"checkpoint": str(folder / filename), "config": str(folder / "uniter-tiny.json"),
            "tokenizer": minilm_path()}


def base_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``uniter`` options of the weights a UNITER checkpoint started from — ``text_checkpoint``, the BERT folder
    (bert-base-cased for the released UNITER) — for the "mask on BERT weights" baseline; the image embedder, which
    BERT lacks, then starts from its seeded random init. Without ``checkpoint``, ``path`` is that start already."""
    if not options.get("checkpoint"):
        return options
    if not options.get("text_checkpoint"):
        raise ConfigError("the base_checkpoint baseline (mask on BERT weights) of a UNITER checkpoint needs "
                          "model.options.text_checkpoint: the BERT folder UNITER started from (bert-base-cased)")
    feature_dim = options.get("image_feature_dim")
    if feature_dim is None:
        mapped, unused = map_uniter_keys(load_state_dict(Path(options["checkpoint"])))
        feature_dim = checkpoint_sizes(mapped, options["checkpoint"], unused)[1]
    base = {k: v for k, v in options.items() if k not in ("checkpoint", "config", "text_checkpoint")}
    return {**base, "path": options["text_checkpoint"], "image_feature_dim": feature_dim,
            "tokenizer": options.get("tokenizer") or options["text_checkpoint"]}
