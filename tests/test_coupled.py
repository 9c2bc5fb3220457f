"""Coupled channel tickets (Torch-Pruning's dependency graph), refill / regroup structures, and their slim models."""

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
from ticketlab.prunable import PrunableConfig, prunable_names
from ticketlab.pruning import prune
from ticketlab.pruning.coupled import coupled_groups
from ticketlab.surgery import slim

CNNS = {
    "resnet20": ("resnet20", {"width": 8}),
    "resnet50": ("resnet50", {"width": 8}),
    "hf_resnet": ("hf", {"model_type": "resnet", "config": {"embedding_size": 8, "hidden_sizes": [8, 16],
                                                             "depths": [1, 1], "layer_type": "bottleneck"}}),
    "hf_convnext": ("hf", {"model_type": "convnext", "config": {"hidden_sizes": [8, 16], "depths": [1, 1],
                                                                 "num_stages": 2}}),
}


def flops(model, x):  # noqa: ANN001, ANN201
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def trained_like(model):  # noqa: ANN001, ANN201
    """BatchNorm shifts and statistics away from their defaults: a dead channel's BN output is then not zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.normal_(generator=gen)
                module.running_mean.normal_(generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def whole_channels(mask: Mask, groups, names) -> bool:  # noqa: ANN001
    """The mask is exactly "a weight is kept unless a channel it belongs to is dead": every channel of a maskable
    group is untouched or gone from all of its slices, and no weight is pruned otherwise."""
    expected = {n: torch.ones_like(t) for n, t in mask.tensors.items()}
    for group in groups:
        if not group.maskable(set(names)):
            continue
        dead = group.removable(mask.tensors)
        for s in group.slices:
            view = expected[s.name] if s.dim == 0 else expected[s.name].transpose(0, 1)
            view[s.index[dead[s.channel]]] = False
    return all(torch.equal(expected[n], mask.tensors[n]) for n in mask.names())


@pytest.mark.parametrize("family", sorted(CNNS))
def test_coupled_groups_are_pruned_together_and_the_slim_model_equals_the_masked_one(family):
    name, options = CNNS[family]
    model = trained_like(build_model(name, 5, options, seed=0))
    names = prunable_names(model, PrunableConfig(prune_stem=True))
    params = dict(model.named_parameters())
    mask = prune("coupled_channel_magnitude", {n: params[n] for n in names}, Mask.ones(model, names), 0.4, None, model)
    groups = coupled_groups(model)
    assert 0.4 <= mask.sparsity() < 0.45 and whole_channels(mask, groups, names)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    small = slim(model, mask)
    masked = mask.apply_(trained_like(build_model(name, 5, options, seed=0)))
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() < 1e-5
    assert flops(small, x) < 0.8 * flops(model, x)
    if family.startswith("resnet"):  # residual streams are pruned too, not only the blocks' inner convolutions
        stream = [g for g in groups if g.maskable(set(names)) and len([s for s in g.slices if s.dim == 0]) > 1]
        assert stream and any(bool(g.removable(mask.tensors).any()) for g in stream)
    if family == "hf_convnext":  # channels through LayerNorm cannot be masked exactly: they stay
        assert any(not g.exact for g in groups)


def test_coupled_rounds_are_nested_and_keep_a_channel_per_group():
    model = build_model("resnet20", 3, {"width": 4}, seed=0)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    first = prune("coupled_channel_magnitude", params, Mask.ones(model, names), 0.3, None, model)
    second = prune("coupled_channel_magnitude", params, first, 0.5, None, model)
    assert all(not torch.any(second.tensors[n] & ~first.tensors[n]) for n in names)
    groups = [g for g in coupled_groups(model) if g.maskable(set(names))]
    assert all(int(g.alive(second.tensors).sum()) >= 1 for g in groups)
    with pytest.raises(ConfigError, match="coupled channel tickets can prune at most"):
        prune("coupled_channel_magnitude", params, Mask.ones(model, names), 0.995, None, model)
    vit = build_model("vit", 3, {"config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                            "intermediate_size": 32, "image_size": 32, "patch_size": 8}})
    vit_names = prunable_names(vit)
    with pytest.raises(ConfigError, match="for transformers use head_ffn"):
        prune("coupled_channel_magnitude", dict(vit.named_parameters()), Mask.ones(vit, vit_names), 0.3, None, vit)


def test_refill_keeps_exactly_the_channels_with_most_surviving_weights():
    model = build_model("resnet20", 3, {"width": 8}, seed=0).eval()
    names = prunable_names(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    current = Mask.ones(model, names)
    unstructured = prune("global_magnitude", params, current, 0.3)
    refilled = prune("global_magnitude", params, current, 0.3, None, model, "channel_refill")
    groups = [g for g in coupled_groups(model) if g.maskable(set(names)) and g.channels > 1]
    assert whole_channels(refilled, groups, names) and 0.3 <= refilled.sparsity() < 0.33
    for group in groups:  # in every group the kept channels are the top ones by surviving-weight count
        kept_count, _ = group.per_channel(unstructured.tensors)
        alive = group.alive(refilled.tensors)
        if bool(alive.all()):
            continue
        assert float(kept_count[alive].min()) >= float(kept_count[~alive].max())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (slim(model, refilled)(x) - refilled.apply_(build_model("resnet20", 3, {"width": 8}, seed=0).eval())(x)
                ).abs().max() < 1e-5


def test_regroup_makes_dense_row_blocks_and_never_regrows():
    from ticketlab.pruning.refill import REGROUP_ROWS

    model = build_model("resnet20", 3, {"width": 8}, seed=0)
    names = prunable_names(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    first = prune("global_magnitude", params, Mask.ones(model, names), 0.4, None, model, "regroup")
    second = prune("global_magnitude", params, first, 0.6, None, model, "regroup")
    assert abs(first.sparsity() - 0.4) < 0.03 and abs(second.sparsity() - 0.6) < 0.03
    for name in names:
        assert not torch.any(second.tensors[name] & ~first.tensors[name])
        matrix = second.tensors[name].flatten(1)
        for start in range(0, matrix.shape[0], REGROUP_ROWS):
            block = matrix[start:start + REGROUP_ROWS]
            assert torch.equal(block.any(0), block.all(0))  # each column of a block is all kept or all pruned


def test_structure_option_refuses_structured_methods_and_runs_an_imp_with_baselines(tmp_path):
    bad = tiny_config(prune={"method": "nm_2_4_magnitude", "structure": "channel_refill"})
    with pytest.raises(ConfigError, match="refines an unstructured method"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="prune structure"):
        parse_config(tiny_config(prune={"structure": "channel_refil"}))
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 8}},
                      prune={"method": "layerwise_magnitude", "structure": "channel_refill", "rounds": 2, "rate": 0.3},
                      baselines=["omp", "random_prune"])
    run = run_experiment(parse_config(cfg), tmp_path, progress=False)
    model = build_model("resnet20", 6, {"width": 8})
    for branch in ("rounds", "baselines/omp", "baselines/random_prune"):
        mask = Mask.load(run / f"{branch}/round_002/mask.safetensors")
        assert whole_channels(mask, coupled_groups(model), mask.names()) and mask.sparsity() >= 0.5
    from ticketlab.export import export_ticket

    rows = {r["format"]: r for r in export_ticket(run, 2, tmp_path / "out", ["state_dict", "slim"])}
    assert rows["slim"]["max_abs_diff"] < 1e-4 and rows["slim"]["bytes"] < 0.7 * rows["state_dict"]["bytes"]


def test_a_slim_ticket_exports_as_a_program_that_plain_torch_loads(tmp_path):
    from ticketlab.export import export_ticket

    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 8}},
                      prune={"method": "coupled_channel_magnitude", "schedule": "explicit", "sparsities": [0.5]},
                      baselines=[])
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    rows = {r["format"]: r for r in export_ticket(run, 1, tmp_path / "out", ["slim", "pt2"])}
    assert rows["pt2"]["max_abs_diff"] < 1e-4
    program = torch.export.load(str(tmp_path / "out" / "ticket.pt2")).module()  # plain torch, no ticketlab code
    from ticketlab.export import ticket_model

    model, mask, _ = ticket_model(run, 1)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert (program(x) - model(x)).abs().max() < 1e-4  # any batch size: the batch axis is dynamic
    convs = [n for n, p in program.state_dict().items() if p.dim() == 4]
    dense = build_model("resnet20", 6, {"width": 8})
    assert sum(program.state_dict()[n].numel() for n in convs) < 0.7 * sum(
        p.numel() for p in dense.parameters() if p.dim() == 4)  # the smaller architecture is what was exported


def test_channel_multiple_keeps_every_wide_group_at_a_multiple_of_it():
    model = trained_like(build_model("resnet20", 3, {"width": 16}, seed=0))
    names = prunable_names(model, PrunableConfig(prune_stem=True))
    params = {n: p.detach() for n, p in model.named_parameters()}
    groups = [g for g in coupled_groups(model) if g.maskable(set(names))]
    for method, structure in (("coupled_channel_magnitude", "none"), ("layerwise_magnitude", "channel_refill")):
        first = prune(method, params, Mask.ones(model, names), 0.3, None, model, structure, 8)
        mask = prune(method, params, first, 0.5, None, model, structure, 8)
        assert 0.5 <= mask.sparsity() < 0.6 and all(not torch.any(mask.tensors[n] & ~first.tensors[n]) for n in names)
        widths = [int(g.alive(mask.tensors).sum()) for g in groups if g.channels >= 16]
        assert widths and all(w % 8 == 0 and w >= 8 for w in widths), widths
        assert any(w < g.channels for w, g in zip(widths, [g for g in groups if g.channels >= 16], strict=True))
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            masked = mask.apply_(trained_like(build_model("resnet20", 3, {"width": 16}, seed=0)))
            assert (slim(model, mask)(x) - masked(x)).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="channel_multiple applies to coupled_channel"):
        parse_config(tiny_config(prune={"method": "global_magnitude", "channel_multiple": 8}))
