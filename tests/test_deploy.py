"""Deployable tickets (issue 28): ONNX exports checked in ONNX Runtime (masked and slim, dynamic batch), one-line
errors, size breakdowns that add up, and ONNX Runtime latency in `bench`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_SCENES, tiny_config
from ticketlab import cli
from ticketlab.config import parse_config
from ticketlab.errors import TicketlabError
from ticketlab.experiment import run_experiment
from ticketlab.export import export_ticket, ticket_model
from ticketlab.onnx_export import export_onnx, run_session, session
from ticketlab.sizes import size_breakdown

pytest.importorskip("onnxruntime")
VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
       "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 8}}, baselines=[],
                      prune={"method": "channel_magnitude", "schedule": "explicit", "sparsities": [0.5]})
    return run_experiment(parse_config(cfg), tmp_path_factory.mktemp("runs"), progress=False)


def test_a_slim_channel_ticket_exports_to_onnx_and_runs_in_onnx_runtime(channel_run, tmp_path):
    (row,) = export_ticket(channel_run, 1, tmp_path, ["onnx"])
    assert row["max_abs_diff"] <= 1e-4 and row["path"].endswith("ticket.onnx")
    ticket, mask, _ = ticket_model(channel_run, 1)
    sess = session(tmp_path / "ticket.onnx")
    assert sess.get_inputs()[0].shape[0] == "batch"  # the batch axis is dynamic
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(run_session(sess, x), ticket(x), atol=1e-4)
    slim_params = sum(t.numel() for t in load_file(export_ticket(channel_run, 1, tmp_path, ["slim"])[0]["path"])
                      .values())
    assert row["bytes"] < 1.5 * 4 * slim_params  # the slim architecture was exported, not the masked dense one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_vit_ticket_exports_to_onnx_with_equal_outputs(tmp_path):
    cfg = tiny_config(model={"name": "vit", "options": {"config": VIT}}, prune={"rounds": 1}, baselines=[],
                      task={"name": "scenes_shape", "options": TINY_SCENES})
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    (row,) = export_ticket(run, 1, tmp_path / "out", ["onnx"])
    assert row["max_abs_diff"] <= 1e-4


def test_an_op_the_exporter_cannot_convert_is_one_line_and_leaves_nothing(tmp_path):
    class Eigen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigh(x @ x.transpose(-1, -2)).eigenvalues

    with pytest.raises(TicketlabError, match=r"unsupported operator aten\._linalg_eigh") as info:
        export_onnx(Eigen(), torch.randn(2, 4, 4), tmp_path / "e.onnx")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_an_export_that_differs_from_the_ticket_is_refused_and_removed(tmp_path, monkeypatch):
    import ticketlab.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "run_session", lambda sess, x: torch.zeros(x.shape[0], 3) + 7.0)
    with pytest.raises(TicketlabError, match="does not reproduce the ticket in ONNX Runtime.*nothing was written"):
        export_onnx(torch.nn.Linear(4, 3), torch.randn(2, 4), tmp_path / "l.onnx")
    assert not list(tmp_path.iterdir())


def test_the_size_breakdown_adds_up_and_names_what_was_never_pruned(channel_run, tmp_path):
    ticket, mask, _ = ticket_model(channel_run, 1)
    state = ticket.state_dict()
    breakdown = size_breakdown(state, mask)
    parts = breakdown["parts"]
    assert sum(c["params"] for c in parts.values()) == sum(t.numel() for t in state.values())
    assert parts["pruned layers"]["params"] == sum(t.numel() for t in mask.tensors.values())
    assert parts["normalisation"]["params"] > 0 and parts["head"]["params"] > 0
    assert breakdown["prunable_sparsity"] == pytest.approx(mask.sparsity())
    assert breakdown["model_sparsity"] == pytest.approx(mask.num_pruned() / sum(t.numel() for t in state.values()))
    (row,) = export_ticket(channel_run, 1, tmp_path, ["state_dict"])
    assert 0 < row["bytes"] - breakdown["total_bytes"] < 20_000  # the file = the parts + the safetensors header
    kept = sum(int(k.sum()) for k in mask.tensors.values())
    never = breakdown["total_bytes"] - parts["pruned layers"]["bytes"]
    assert breakdown["ideal_bytes"] == int(4 * kept + never + mask.num_total() / 8)


def test_bench_times_onnx_runtime_and_export_prints_the_breakdown(channel_run, tmp_path, capsys):
    assert cli.main(["bench", f"{channel_run}:1", "--runtime", "onnxruntime", "--seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "cpu (onnxruntime)" in out and "ticket (dense storage)" in out and "ticket (structures removed)" in out
    assert cli.main(["export", f"{channel_run}:1", "--out", str(tmp_path), "--format", "state_dict,onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnx " in out and "pruned layers" in out and "normalisation" in out and "ideal size" in out
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", f"{channel_run}:1", "--runtime", "onnxruntim"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "did you mean 'onnxruntime'" in err


def test_exports_honour_the_umask_and_errors_list_every_format(channel_run, tmp_path, capsys):
    import os

    old = os.umask(0o022)
    try:
        rows = export_ticket(channel_run, 1, tmp_path, ["state_dict", "compressed", "slim", "onnx"])
    finally:
        os.umask(old)
    assert all(os.stat(r["path"]).st_mode & 0o777 == 0o644 for r in rows)  # safetensors alone writes 0600
    assert cli.main(["export", f"{channel_run}:1", "--out", str(tmp_path), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "state_dict, compressed, onnx, pt2, slim" in err


def test_a_vit_hf_export_carries_a_pooler_so_plain_transformers_misses_nothing(tmp_path):
    from transformers import AutoModel

    cfg = tiny_config(model={"name": "vit", "options": {"config": VIT}}, prune={"rounds": 1}, baselines=[],
                      task={"name": "scenes_shape", "options": TINY_SCENES})
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)
    (row,) = export_ticket(run, 1, tmp_path / "out", ["hf"])
    model, info = AutoModel.from_pretrained(tmp_path / "out/hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.pooler is not None
    assert row["max_abs_diff"] <= 1e-5


def test_bench_interleaves_its_variants_and_excludes_the_warm_up(monkeypatch):
    """A fake clock: each call of model i costs i + 1 'seconds'; the warm-up call costs 1000 and must not count."""
    import ticketlab.bench as bench
    import ticketlab.timing as timing

    clock, order = {"now": 0.0}, []

    class Fake(torch.nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i, self.calls = i, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            order.append(self.i)
            clock["now"] += 1000.0 if self.calls == 1 else self.i + 1.0
            return x

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    timings = bench.interleaved([Fake(0), Fake(1)], torch.zeros(1), "cpu", seconds=5 * 0.001, rounds=5)
    assert [t["median_ms"] for t in timings] == [1000.0, 2000.0] and all(t["iqr_ms"] == 0 for t in timings)
    assert order[:2] == [0, 1] and order[2:] == [0, 1] * 5  # warm-ups, then 5 rounds alternating


def test_bench_any_round_falls_back_to_the_rewound_weights(tmp_path, capsys):
    cfg = tiny_config(model={"name": "resnet20", "options": {"width": 4}}, baselines=[], prune={"rounds": 3})
    run = run_experiment(parse_config(cfg), tmp_path / "runs", progress=False)  # keep: needed drops round 1-2
    assert not (run / "rounds/round_001/weights.safetensors").is_file()
    assert cli.main(["bench", f"{run}:1", "--seconds", "0.05", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "θp ⊙ m (round's trained weights not kept)" in out and ", 1 thread(s)" in out
