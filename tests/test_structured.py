"""Channel tickets: whole channels, IMP-compatible, and physically removed by surgery with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import tiny_config
from ticketlab.config import parse_config
from ticketlab.errors import ConfigError
from ticketlab.experiment import run_experiment
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.pruning.structured import inner_convs
from ticketlab.surgery import slim


def flops(model, x):  # noqa: ANN001, ANN201
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_channel_tickets_prune_whole_inner_channels_and_slim_keeps_the_function():
    model = build_model("resnet20", 10, {"width": 8}, seed=0).eval()
    with torch.no_grad():  # trained-like BatchNorm shifts: a pruned channel's BN output is not zero
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.normal_(generator=torch.Generator().manual_seed(1))
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), 0.3)
    inner = inner_convs(names)
    assert inner and all(".conv1." in n for n in inner)  # basic blocks: only conv1 reads into the block
    readers = {n.replace(".conv1.", ".conv2.") for n in inner}
    for name, keep in mask.tensors.items():
        rows = keep.flatten(1)
        if name in inner:
            assert torch.all(rows.all(1) | ~rows.any(1)), name  # whole output channels
            assert rows.any(1).sum() >= 1
            reader = mask.tensors[name.replace(".conv1.", ".conv2.")].transpose(0, 1).flatten(1)
            assert torch.equal(reader.any(1), rows.any(1)) and torch.all(reader.all(1) | ~reader.any(1))
        elif name not in readers:
            assert keep.all(), name  # residual-stream convolutions stay dense
    largest_channel = max(mask.tensors[n][0].numel() * 2 for n in inner)
    assert 0.3 <= mask.sparsity() < 0.3 + largest_channel / mask.num_total()
    small = slim(model, mask)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = mask.apply_(model)(x)
    assert torch.allclose(small(x), reference, atol=1e-5)
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
    assert mask.num_pruned() <= removed <= mask.num_pruned() + 2 * sum(rows.shape[0] for rows in mask.tensors.values())
    assert flops(small, x) < 0.9 * flops(model, x)


def test_channel_method_rejects_models_without_residual_blocks_and_unreachable_sparsity():
    vit = build_model("vit", 3, {"config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                            "intermediate_size": 32, "image_size": 32, "patch_size": 8}})
    names = prunable_names(vit)
    params = dict(vit.named_parameters())
    with pytest.raises(ConfigError, match="needs residual blocks"):
        prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(vit, names), 0.3)
    resnet = build_model("resnet20", 10, {"width": 4}, seed=0)
    names = prunable_names(resnet)
    params = dict(resnet.named_parameters())
    with pytest.raises(ConfigError, match="channel tickets can prune at most"):
        prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(resnet, names), 0.99)


def test_channel_imp_run_with_baselines(tmp_path):
    cfg = tiny_config(prune={"method": "channel_magnitude", "rounds": 2, "rate": 0.15}, baselines=["random_prune"])
    run = run_experiment(parse_config(cfg), tmp_path, progress=False)
    masks = [Mask.load(run / f"rounds/round_00{k}/mask.safetensors") for k in (1, 2)]
    assert masks[0].sparsity() < masks[1].sparsity()
    assert all(not torch.any(masks[1].tensors[n] & ~masks[0].tensors[n]) for n in masks[0].names())  # nested
    rp = Mask.load(run / "baselines/random_prune/round_002/mask.safetensors")
    inner = inner_convs(rp.names())
    assert all(torch.all(rp.tensors[n].flatten(1).all(1) | ~rp.tensors[n].flatten(1).any(1)) for n in inner)


def test_bench_times_a_channel_ticket_with_its_channels_removed(tmp_path):
    from ticketlab.bench import bench_ticket

    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 8}},
                      prune={"method": "channel_magnitude", "schedule": "explicit", "sparsities": [0.35]}, baselines=[])
    run = run_experiment(parse_config(cfg), tmp_path, progress=False)
    rows = {r["variant"]: r for r in bench_ticket(run, 1, seconds=0.05) if r["device"] == "cpu"}
    slimmed, dense = rows["ticket (structures removed)"], rows["dense"]
    assert slimmed["params"] < dense["params"] and slimmed["flops_b1"] < 0.9 * dense["flops_b1"]


# -- transformer heads and FFN neurons ----------------------------------------------------------------------
HEAD_MODELS = {
    "vit": ("vit", {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "intermediate_size": 64, "image_size": 16, "patch_size": 8}}),
    "bert": ("bert", {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 64, "vocab_size": 50}}),
    "distilbert": ("hf", {"model_type": "distilbert", "config": {"n_layers": 2, "dim": 32, "hidden_dim": 64,
                                                                  "n_heads": 4, "vocab_size": 50}}),
}


@pytest.mark.parametrize("family", sorted(HEAD_MODELS))
def test_head_ffn_tickets_remove_whole_heads_and_neurons_exactly(family):
    from ticketlab.pruning.heads import transformer_blocks
    from ticketlab.surgery import slim

    name, options = HEAD_MODELS[family]
    model = build_model(name, 3, options, seed=0).eval()
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("head_ffn_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), 0.4, None, model)
    assert 0.4 <= mask.sparsity() < 0.4 + 8 * 32 * 4 / mask.num_total()  # overshoots by less than one head
    blocks = transformer_blocks(model)
    assert sorted(b.kind for b in blocks) == ["head", "head", "neuron", "neuron"]
    for block in blocks:  # every group is all kept or all pruned, across producers and the consumer
        rows = torch.stack([mask.tensors[n].reshape(-1, block.size * mask.tensors[n].shape[1]).all(1) |
                            ~mask.tensors[n].reshape(-1, block.size * mask.tensors[n].shape[1]).any(1)
                            for n in block.producers])
        assert bool(rows.all())
        alive = mask.tensors[block.producers[0]].reshape(-1, block.size * params[block.producers[0]].shape[1]).any(1)
        assert torch.equal(mask.tensors[block.consumer].t().reshape(alive.numel(), -1).any(1), alive)
        assert int(alive.sum()) >= 1
    small = slim(model, mask)
    x = torch.randn(2, 3, 16, 16) if name == "vit" else torch.randint(1, 50, (2, 7))
    masked = build_model(name, 3, options, seed=0).eval()
    mask.apply_(masked)
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
    assert removed >= mask.num_pruned() * 0.95  # the pruned weights are gone (their biases too)


def test_head_ffn_needs_transformer_layers():
    resnet = build_model("resnet20", 2, {"width": 4})
    names = prunable_names(resnet)
    params = dict(resnet.named_parameters())
    with pytest.raises(ConfigError, match="head/FFN tickets need attention or FFN layers"):
        prune("head_ffn_magnitude", {n: params[n] for n in names}, Mask.ones(resnet, names), 0.3, None, resnet)


def test_structured_exports_are_smaller_and_reload_with_plain_torch(tmp_path):
    from safetensors.torch import load_file

    from ticketlab.export import export_ticket
    from ticketlab.surgery import fit_to_state

    options = {"config": {**HEAD_MODELS["vit"][1]["config"], "image_size": 32, "patch_size": 16}}
    cfg = tiny_config(model={"name": "vit", "options": options}, task={"name": "scenes_shape", "options":
                      {"n_train": 64, "n_val": 16, "n_test": 16}},
                      prune={"method": "head_ffn_magnitude", "schedule": "explicit", "sparsities": [0.5]},
                      baselines=["random_prune"])
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    rows = {r["format"]: r for r in export_ticket(run, 1, tmp_path / "out", ["state_dict", "slim", "pt2"])}
    program = torch.export.load(str(tmp_path / "out" / "ticket.pt2")).module()  # plain torch loads the slim ViT
    sliced = [v.shape[0] for k, v in program.state_dict().items() if k.endswith("fc1.weight")]
    assert rows["pt2"]["max_abs_diff"] < 1e-4 and sliced and min(sliced) < 64
    pruned = Mask.load(run / "rounds/round_001/mask.safetensors").num_pruned()
    assert rows["state_dict"]["bytes"] - rows["slim"]["bytes"] >= 0.95 * 4 * pruned  # the pruned fp32 weights are gone
    assert rows["slim"]["max_abs_diff"] < 1e-4
    state = load_file(str(tmp_path / "out" / "ticket.slim.safetensors"))
    from transformers import AutoConfig, AutoModel

    core = AutoModel.from_config(AutoConfig.for_model("vit", **options["config"]), add_pooling_layer=False)
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    fit_to_state(core, backbone).load_state_dict(backbone)  # plain transformers + the 20-line resizer
    assert core.layers[0].attention.q_proj.out_features < 32 or core.layers[1].mlp.fc1.out_features < 64
    rp = Mask.load(run / "baselines/random_prune/round_001/mask.safetensors")
    assert rp.sparsity() >= 0.5  # the random baseline prunes whole random heads / neurons (scope head_ffn)
    with pytest.raises(ConfigError, match="format nm needs an N:M ticket"):
        export_ticket(run, 1, tmp_path / "out2", ["nm"])


def test_the_demo_comparison_of_unstructured_structured_and_two_four_tickets(tmp_path):
    from ticketlab.comparison import compare_structures

    cfg = parse_config(tiny_config(model={"name": "resnet20", "options": {"width": 8}}))
    rows, table = compare_structures(cfg, tmp_path, seconds=0.05)
    assert [r["kind"] for r in rows] == ["dense", "unstructured", "structured", "2:4"]
    kinds = {r["kind"]: r for r in rows}
    assert kinds["2:4"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert kinds["unstructured"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert 0.5 <= kinds["structured"]["sparsity"] < 0.52 and kinds["structured"]["method"] == "coupled_channel_magnitude"
    assert kinds["structured"]["params"] < 0.8 * kinds["dense"]["params"]  # channels really gone
    assert all(0 <= r["test_score"] <= 1 and r["latency_ms"] > 0 for r in rows)
    assert "| 2:4 | nm_2_4_magnitude | 50.00 % |" in table and "speed-up" in table
    assert kinds["structured"]["latency_ms"] < kinds["dense"]["latency_ms"] * 1.5  # measured, not assumed
