"""Exports: state dict with the family's own keys, compressed values + bitmask, save_pretrained folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_SCENES, tiny_config
from ticketlab import cli
from ticketlab.config import parse_config
from ticketlab.errors import TicketlabError
from ticketlab.experiment import run_experiment
from ticketlab.export import export_ticket, load_compressed
from ticketlab.masks import Mask

VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
       "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 16}},
                      prune={"schedule": "explicit", "sparsities": [0.8]}, baselines=[])
    return run_experiment(parse_config(cfg), tmp_path_factory.mktemp("runs"), progress=False)


def test_resnet_ticket_exports_with_torchvision_keys_and_a_compressed_file(resnet_run, tmp_path):
    rows = {r["format"]: r for r in export_ticket(resnet_run, 1, tmp_path, ["state_dict", "compressed"])}
    state = load_file(tmp_path / "ticket.safetensors")
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer3.2.bn2.running_mean", "fc.weight", "fc.bias"} <= set(state)
    assert not any(k.startswith(("backbone.", "head.")) for k in state)
    mask = Mask.load(resnet_run / "rounds/round_001/mask.safetensors")
    weight = state["layer2.0.conv2.weight"]
    assert torch.count_nonzero(weight[~mask.tensors["backbone.layer2.0.conv2.weight"]]) == 0
    dense = load_compressed(tmp_path / "ticket.compressed.safetensors")
    assert set(dense) == set(state) and all(torch.equal(dense[k], state[k]) for k in state)
    assert rows["compressed"]["max_abs_diff"] <= 1e-5 and rows["state_dict"]["max_abs_diff"] == 0.0
    ratio = rows["compressed"]["dense_bytes"] / rows["compressed"]["bytes"]
    assert ratio >= 3.0, ratio  # an 80 %-sparse ticket: values + 1 bit per weight


def test_hf_ticket_is_a_save_pretrained_folder_plain_transformers_loads(tmp_path, capsys):
    from transformers import AutoModel

    cfg = tiny_config(model={"name": "vit", "options": {"config": VIT}}, prune={"rounds": 1}, baselines=[],
                      task={"name": "scenes_shape", "options": TINY_SCENES})
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    assert cli.main(["export", f"{run}:1", "--out", str(tmp_path / "out"), "--format", "hf,state_dict",
                     "--rewound"]) == 0
    out = capsys.readouterr().out
    assert "hf " in out and "max |Δ output|" in out
    model = AutoModel.from_pretrained(tmp_path / "out/hf")
    mask = Mask.load(run / "rounds/round_001/mask.safetensors")
    name = next(n for n in mask.names() if "intermediate" in n or "mlp" in n)
    weight = dict(model.named_parameters())[name.removeprefix("backbone.model.")]
    assert torch.count_nonzero(weight[~mask.tensors[name]]) == 0


def test_bad_exports_are_one_line_errors(resnet_run, tmp_path, capsys):
    for args, match in ((["--format", "hf"], "format hf needs a Hugging Face model family"),
                        (["--format", "tflite"], "unknown export format 'tflite'")):
        assert cli.main(["export", str(resnet_run), "--out", str(tmp_path), *args]) == 2
        assert match in capsys.readouterr().err
    assert cli.main(["export", f"{resnet_run}:7", "--out", str(tmp_path)]) == 2
    assert "has no finished round 7" in capsys.readouterr().err


def test_bench_reports_sizes_flops_and_speed(resnet_run):
    from ticketlab.bench import bench_ticket

    rows = {r["variant"]: r for r in bench_ticket(resnet_run, 1, seconds=0.05) if r["device"] == "cpu"}
    mask = Mask.load(resnet_run / "rounds/round_001/mask.safetensors")
    dense, ticket = rows["dense"], rows["ticket (compressed file)"]
    assert ticket["nonzero_params"] == dense["params"] - mask.num_pruned()
    assert dense["file_bytes"] / ticket["file_bytes"] >= 3.0
    assert dense["flops_b1"] == ticket["flops_b1"] > 1_000_000  # stored densely, the zeros still cost FLOPs
    assert all(r["latency_b1"]["median_ms"] > 0 and r["throughput_b32"] > 0 for r in rows.values())


def test_bench_cli_prints_one_line_per_variant(resnet_run, capsys):
    assert cli.main(["bench", str(resnet_run), "--seconds", "0.05"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    timed = [line for line in lines if "throughput(b32)" in line]
    assert len(timed) == 3 and all("(runs densely)" in line for line in timed[1:])  # stored densely: same compute
    assert "interleaved rounds" in lines[0] and "thread(s)" in lines[0]


def test_nm_export_records_its_pattern_and_every_layer_holds_it(tmp_path):
    from safetensors import safe_open

    from ticketlab.export import export_ticket, semi_structured

    cfg = tiny_config(model={"name": "vit", "options": {"config": VIT}},
                      prune={"method": "nm_2_4_magnitude", "schedule": "explicit", "sparsities": [0.5]}, baselines=[])
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    (row,) = export_ticket(run, 1, tmp_path / "out", ["nm"])
    assert row["max_abs_diff"] < 1e-5
    with safe_open(row["path"], "pt") as handle:
        meta = handle.metadata()
        layers = json.loads(meta["layers"])
        assert meta["pattern"] == "2:4" and len(layers) == 2 * 6
        for key in layers:  # at most 2 non-zeros in every 4 consecutive weights of a row
            groups = handle.get_tensor(key).reshape(-1, 4)
            assert int((groups != 0).sum(1).max()) <= 2
    if not torch.cuda.is_available():
        with pytest.raises(TicketlabError, match="need a CUDA GPU"):
            semi_structured(torch.nn.Linear(8, 8))
