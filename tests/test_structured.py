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
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), 0.3)
    inner = inner_convs(names)
    assert inner and all(".conv1." in n for n in inner)  # basic blocks: only conv1 reads into the block
    for name, keep in mask.tensors.items():
        rows = keep.flatten(1)
        if name in inner:
            assert torch.all(rows.all(1) | ~rows.any(1)), name  # whole output channels
            assert rows.any(1).sum() >= 1
        else:
            assert keep.all(), name  # residual-stream convolutions stay dense
    largest_filter = max(mask.tensors[n][0].numel() for n in inner)
    assert 0.3 <= mask.sparsity() < 0.3 + largest_filter / mask.num_total()
    small = slim(model, mask)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = mask.apply_(model)(x)
    assert torch.allclose(small(x), reference, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert flops(small, x) < 0.85 * flops(model, x)


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
        prune("channel_magnitude", {n: params[n] for n in names}, Mask.ones(resnet, names), 0.9)


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
    slimmed, dense = rows["ticket (channels removed)"], rows["dense"]
    assert slimmed["params"] < dense["params"] and slimmed["flops_b1"] < 0.8 * dense["flops_b1"]
