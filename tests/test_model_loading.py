"""Any transformers architecture through the Auto classes, checked loading, and ImageNet-layout ResNets with the
key formats of torchvision / MoCo v2 / SimCLR checkpoints."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ticketlab.checkpoints import load_backbone
from ticketlab.config import check_theta_p_source, parse_config
from ticketlab.errors import ConfigError, TicketlabError
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names

TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 120, "max_position_embeddings": 64}
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8}
ARCHS = {
    "distilbert": {"n_layers": 2, "dim": 32, "hidden_dim": 64, "n_heads": 2, "vocab_size": 120},
    "roberta": {**TEXT, "vocab_size": 120},
    "deberta-v2": TEXT,
    "deit": VISION,
    "beit": VISION,
    "swin": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
             "window_size": 4},
    "convnext": {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "image_size": 32},
    "resnet": {"hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8},
}
FAMILY = {"distilbert": "transformer", "roberta": "transformer", "deberta-v2": "transformer", "deit": "transformer",
          "beit": "transformer", "swin": "transformer", "convnext": "hybrid", "resnet": "cnn"}


def save_tiny(tmp_path, model_type: str):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **ARCHS[model_type]))
    folder = tmp_path / model_type
    model.save_pretrained(folder)
    return folder, model


def inputs_for(model_type: str) -> torch.Tensor:
    if model_type in ("distilbert", "roberta", "deberta-v2"):
        return torch.randint(3, 120, (2, 9))
    return torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_a_folder_loads_as_its_own_architecture_with_its_weights(tmp_path, model_type):
    folder, source = save_tiny(tmp_path, model_type)
    name = "bert" if model_type in ("distilbert", "roberta", "deberta-v2") else "vit"  # the "wrong" family name
    model = build_model(name, 3, {"path": str(folder)}, seed=0)
    assert type(model.backbone.model).__name__ == type(source).__name__  # not a random BERT / ViT
    theirs = source.state_dict()
    ours = {k.removeprefix("backbone.model."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    shared = [k for k in ours if k in theirs]
    assert len(shared) >= len(theirs) - 2  # (a pooler the features do not use may be left out)
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    assert model.family == FAMILY[model_type]
    out = model(inputs_for(model_type))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert prunable_names(model)  # a default prunable set exists for every family


def test_prunable_defaults_follow_the_structure(tmp_path):
    folder, _ = save_tiny(tmp_path, "convnext")
    names = prunable_names(build_model("hf", 2, {"path": str(folder)}))
    assert not any("embeddings" in n for n in names)  # the stem (patchify conv) is not pruned
    assert any("dwconv" in n for n in names) and any("pwconv1" in n for n in names)
    folder, _ = save_tiny(tmp_path, "distilbert")
    names = prunable_names(build_model("bert", 2, {"path": str(folder)}))
    assert len(names) == 2 * 6  # q, k, v, out, ffn lin1, lin2 per layer; embeddings never


def test_missing_backbone_weights_are_an_error_naming_them(tmp_path):
    folder, _ = save_tiny(tmp_path, "roberta")
    file = folder / "model.safetensors"
    state = load_file(file)
    dropped = [k for k in state if "layer.1.attention" in k and k.endswith("query.weight")]
    assert dropped
    save_file({k: v for k, v in state.items() if k not in dropped}, file, metadata={"format": "pt"})
    with pytest.raises(TicketlabError, match=r"missing 1: .*layer\.1\.attention\.self\.query\.weight"):
        build_model("bert", 2, {"path": str(folder)})
    model = build_model("bert", 2, {"path": str(folder), "allow_missing": [r"layer\.1\.attention\.self\.query"]})
    assert model(inputs_for("roberta")).shape == (2, 2)


def test_a_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TicketlabError, match="not a model folder"):
        build_model("hf", 2, {"path": str(tmp_path)})
    with pytest.raises(ConfigError, match="model_type"):
        build_model("hf", 2, {})


def test_text_inputs_use_the_models_pad_id(tmp_path):
    folder, _ = save_tiny(tmp_path, "roberta")  # RoBERTa pads with 1, not 0
    model = build_model("bert", 2, {"path": str(folder)}).eval()
    ids = torch.tensor([[0, 5, 6, 2, 1, 1]])
    explicit = model({"input_ids": ids, "attention_mask": (ids != 1).long()})
    assert torch.allclose(model(ids), explicit, atol=1e-6)


# -- our ResNets: ImageNet layout and published key formats --------------------------------------------------
def torchvision_keys(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_model(arch, 10, {"width": 8, "stem": "imagenet"}).backbone.state_dict()


@pytest.mark.parametrize(("arch", "fmt"), [("resnet50", "torchvision"), ("resnet50", "moco_v2"),
                                           ("resnet50", "simclr"), ("resnet18", "torchvision"),
                                           ("resnet101", "torchvision"), ("resnet152", "moco_v2"),
                                           ("resnet152", "simclr")])
def test_imagenet_resnet_checkpoints_load_exactly(tmp_path, arch, fmt):
    source = torchvision_keys(arch)
    width = source["layer4.0.conv1.weight"].shape[0] * (1 if arch == "resnet18" else 4)  # bottlenecks: 4x
    if fmt == "torchvision":  # torchvision's resnet50(): plain keys and a 1000-way fc
        state = {**source, "fc.weight": torch.randn(1000, width), "fc.bias": torch.randn(1000)}
    elif fmt == "moco_v2":  # main_moco.py: {"state_dict": {"module.encoder_q.*", "module.encoder_k.*", queue}}
        state = {f"module.encoder_q.{k}": v for k, v in source.items()}
        state |= {f"module.encoder_k.{k}": v + 1 for k, v in source.items()}
        state |= {"module.encoder_q.fc.0.weight": torch.randn(width, width), "module.encoder_q.fc.2.weight":
                  torch.randn(128, width), "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1)}
    else:  # SimCLR ports: backbone.* + projector
        state = {f"backbone.{k}": v for k, v in source.items()}
        state |= {"projector.0.weight": torch.randn(width, width), "projector.2.weight": torch.randn(128, width)}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 200}, path)
    target = build_model(arch, 10, {"width": 8, "stem": "imagenet"}, seed=5)
    report = load_backbone(target.backbone, path)
    assert report.missing == [] and report.shape_mismatch == []
    assert report.parameters_loaded == report.parameters_total == len(list(target.backbone.parameters()))
    loaded = target.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())  # encoder_k (v + 1) never wins
    assert target(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert target.backbone.conv1.kernel_size == (7, 7) and "maxpool" in dict(target.backbone.named_modules())


def test_a_checkpoint_for_another_width_is_refused_not_half_loaded(tmp_path):
    path = tmp_path / "w16.safetensors"
    save_file(build_model("resnet20", 2, {"width": 16}).backbone.state_dict(), path)
    target = build_model("resnet20", 2, {"width": 8})
    with pytest.raises(TicketlabError, match=r"at random init \(shape mismatch"):
        load_backbone(target.backbone, path)


def test_the_cifar_adaptation_of_an_imagenet_checkpoint(tmp_path):
    """Chen et al.: 3x3 stride-1 stem, no max-pool; the stem is learnt anew (allowed explicitly), not pruned."""
    path = tmp_path / "in.pth"
    torch.save(torchvision_keys("resnet50"), path)
    target = build_model("resnet50", 10, {"width": 8})  # stem: cifar is the default
    report = load_backbone(target.backbone, path, allow_missing=[r"^conv1\."])
    assert report.missing == ["conv1.weight"] and report.parameters_loaded == report.parameters_total - 1
    assert "backbone.conv1.weight" not in prunable_names(target)


def test_rewind_to_pretrained_without_theta_p_is_an_error(tiny):
    cfg = parse_config({**tiny, "prune": {"rounds": 2, "rewind": "pretrained"}})
    with pytest.raises(ConfigError, match="no pre-trained weights"):
        check_theta_p_source(cfg)
    check_theta_p_source(parse_config({**tiny, "prune": {"rounds": 2, "rewind": "init"}}))
    check_theta_p_source(parse_config({**tiny, "model": {"name": "resnet20", "checkpoint": "x.safetensors"},
                                       "prune": {"rounds": 2, "rewind": "pretrained"}}))


def test_a_deeper_resnets_checkpoint_is_refused_by_a_shallower_one(tmp_path):
    """ResNet-152 weights given to a ResNet-50: every ResNet-50 key fits, so only the surplus blocks tell."""
    deep = build_model("resnet152", 10, {"width": 4, "stem": "imagenet"}).backbone.state_dict()
    torch.save({f"module.encoder_q.{k}": v for k, v in deep.items()}, tmp_path / "moco_r152.pth")
    shallow = build_model("resnet50", 10, {"width": 4, "stem": "imagenet"}).backbone
    with pytest.raises(TicketlabError, match=r"has no place for \(module\.encoder_q\.layer2\.4\.conv1\.weight") as info:
        load_backbone(shallow, tmp_path / "moco_r152.pth")
    assert "\n" not in str(info.value) and "resnet152" in str(info.value)
    deep_model = build_model("resnet152", 10, {"width": 4, "stem": "imagenet"}).backbone
    assert load_backbone(deep_model, tmp_path / "moco_r152.pth").parameters_loaded > 0  # its own architecture loads
