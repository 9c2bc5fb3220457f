"""Cheaper IMP: early-bird and budgeted rounds, full training of reported rounds, LR rewinding, compute records."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_config
from ticketlab.config import parse_config
from ticketlab.errors import ConfigError
from ticketlab.experiment import run_experiment
from ticketlab.mask_search import MaskSearch, mask_distance
from ticketlab.masks import Mask
from ticketlab.paths import RunPaths
from ticketlab.tensorfiles import load_tensors

SCENES = {"name": "scenes_shape", "options": {"n_train": 64, "n_val": 32, "n_test": 32}}


def config(**prune: object) -> dict:
    return tiny_config(task=SCENES, model={"name": "resnet20", "options": {"width": 4}},
                       train={"optimizer": "sgd", "lr": 0.05, "epochs": 3, "batch_size": 16},
                       prune={"schedule": "explicit", "sparsities": [0.2, 0.4, 0.6], **prune}, baselines=[])


def metrics(run, k):  # noqa: ANN001, ANN201
    return json.loads((run / f"rounds/round_{k:03d}/metrics.json").read_text())


def test_hamming_distance_is_exact_on_hand_made_masks():
    a = Mask({"w": torch.tensor([True, True, False, False]), "v": torch.ones(2, 3, dtype=torch.bool)})
    b = Mask({"w": torch.tensor([True, False, True, False]), "v": torch.ones(2, 3, dtype=torch.bool)})
    assert mask_distance(a, b) == pytest.approx(2 / 10) and mask_distance(a, a) == 0.0


def test_early_bird_stops_when_the_mask_is_stable_and_not_before():
    frozen_at = 10  # the scores change at every step before, never after

    def draw(model):  # noqa: ANN001, ANN202
        step = min(model["step"], frozen_at)
        return Mask({"w": torch.arange(20) % (step % 5 + 2) == 0})

    search = MaskSearch(draw, every=1, epsilon=0.01, window=3)
    state = {"step": 0}
    for step in range(1, 40):
        state["step"] = step
        search.on_step_end(step, state)
        if search.stop:
            break
    assert search.stopped_at == frozen_at + 3  # three draws in a row (11, 12, 13) equal to the one before
    assert all(d > 0.01 for _, d in search.curve[:-3]) and all(d == 0 for _, d in search.curve[-3:])
    budget = MaskSearch(draw, budget_step=7)
    for step in range(1, 8):
        state["step"] = step
        budget.on_step_end(step, state)
        assert budget.stop == (step == 7)


def test_a_search_that_never_triggers_changes_nothing(tmp_path):
    full = run_experiment(parse_config(config()), tmp_path / "a", progress=False)
    never = run_experiment(parse_config(config(early_bird={"epsilon": 1e-12, "window": 5, "every": 1})), tmp_path / "b",
                           progress=False)
    for k in range(4):
        a, b = metrics(full, k), metrics(never, k)
        assert a["score"] == b["score"] and b.get("fully_trained", True)
        assert torch.equal(Mask.load(full / f"rounds/round_{k:03d}/mask.safetensors").flat(),
                           Mask.load(never / f"rounds/round_{k:03d}/mask.safetensors").flat())


def test_early_bird_rounds_search_and_only_reported_rounds_train_fully(tmp_path):
    cfg = config(method="coupled_channel_magnitude", early_bird={"epsilon": 0.5, "window": 1, "every": 1},
                 report_rounds="last")
    run = run_experiment(parse_config(cfg), tmp_path, progress=False)
    full_steps = metrics(run, 0)["compute"]["optimizer_steps"]
    assert full_steps == 3 * 4  # 3 epochs of 64 / 16
    for k in (1, 2):
        m = metrics(run, k)
        assert m["fully_trained"] is False and m["search"]["stopped_at_step"] == 2  # the first two draws agree
        assert m["compute"]["optimizer_steps"] == 2 and (run / f"rounds/round_{k:03d}/next_mask.safetensors").is_file()
        nxt = Mask.load(run / f"rounds/round_{k:03d}/next_mask.safetensors")
        assert torch.equal(nxt.flat(), Mask.load(run / f"rounds/round_{k + 1:03d}/mask.safetensors").flat())
    last = metrics(run, 3)
    assert last.get("fully_trained", True) and last["compute"]["optimizer_steps"] == full_steps
    table = (run / "results.md").read_text()
    assert "mask search only (2 steps)" in table and f"{2 * full_steps + 4:,} optimizer steps" in table
    reported = run_experiment(parse_config(config(round_budget=0.25, report_rounds=[2])), tmp_path, progress=False)
    m1, m2 = metrics(reported, 1), metrics(reported, 2)
    assert m1["fully_trained"] is False and m1["compute"]["optimizer_steps"] == 3
    assert m2["fully_trained"] is True and m2["compute"]["optimizer_steps"] == 3 + full_steps  # search + full


def test_compute_records_add_up(tmp_path):
    run = run_experiment(parse_config(config()), tmp_path, progress=False)
    for k in range(4):
        m = metrics(run, k)
        assert m["compute"]["samples"] == m["compute"]["optimizer_steps"] * 16 == m["samples_seen"] == 3 * 64


def test_learning_rate_rewinding_starts_from_the_previous_round(tmp_path):
    """Round 1 of an LR-rewound run ends near round 0's trained weights; rewound to θ0 it ends near θ0."""
    distances = {}
    for rewind in ("lr", "init"):
        run = run_experiment(parse_config(config(rewind=rewind, rounds=1, schedule="remaining") | {"keep": "all"}),
                             tmp_path, progress=False)
        dense_final = load_tensors(run / "rounds/round_000/final_weights.safetensors")[0]
        theta0 = load_tensors(RunPaths(run).theta_p)[0]
        ticket = load_tensors(run / "rounds/round_001/final_weights.safetensors")[0]
        mask = Mask.load(run / "rounds/round_001/mask.safetensors")
        distances[rewind] = [sum(float((ticket[n] - ref[n] * mask.tensors[n]).norm()) for n in mask.names())
                             for ref in (dense_final, theta0)]
    assert distances["lr"][0] < distances["init"][0] and distances["init"][1] < distances["lr"][1]


@pytest.mark.parametrize("prune, message", [
    ({"early_bird": {"epsilon": 1.5}}, "epsilon must lie in"),
    ({"early_bird": {"window": 0}}, "window must be >= 1"),
    ({"early_bird": {"every": 10_000}}, "larger than a round"),
    ({"round_budget": 0.0}, "round_budget must lie in"),
    ({"round_budget": 1.5}, "round_budget must lie in"),
    ({"report_rounds": "some"}, "report_rounds must be all, last"),
    ({"early_bird": {}, "round_budget": 0.5}, "not both"),
])
def test_bad_cheaper_imp_options_are_one_line_errors(tmp_path, prune, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(parse_config(config(**prune)), tmp_path, progress=False)
