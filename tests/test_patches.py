import dataclasses
import json

import pytest
import torch
import yaml

from tests.conftest import assert_figure
from ticketlab import cli
from ticketlab.config import ModelConfig, TaskConfig, TrainConfig
from ticketlab.data import build_task
from ticketlab.errors import DataError
from ticketlab.models import build_model
from ticketlab.objectives.patches import RandomPatches, TicketPatches
from ticketlab.patches.tickets import find_tickets, load_tickets, save_tickets, with_tickets
from ticketlab.patches.tokens import cls_attention, default_reduction_layers, keep_count, token_schedule, top_tokens
from ticketlab.patches.vit import embed_patches, patch_vit, use_eager_attention, vit_forward
from ticketlab.results import score
from ticketlab.studies.patch_tickets import SelectorConfig, run_selection
from ticketlab.train import train_model

VIT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
       "image_size": 32, "patch_size": 4}  # 64 patches
SMALL = {"n_train": 64, "n_val": 32, "n_test": 32}


def vit_model(seed=0, layers=4):
    return build_model("vit", 3, {"config": {**VIT, "num_hidden_layers": layers}}, seed=seed)


def test_token_counts_follow_the_study():
    assert token_schedule(196, 0.9, 3) == [177, 160, 144]
    assert token_schedule(196, 0.7, 3) == [138, 97, 68]
    assert token_schedule(64, 0.5, 3) == [32, 16, 8]
    assert keep_count(10, 1.0) == 10 and keep_count(3, 0.01) == 1
    assert default_reduction_layers(12) == (3, 6, 9)  # blocks 4, 7, 10 (1-based)
    assert default_reduction_layers(4) == (0, 1, 2)
    with pytest.raises(ValueError, match="keep rate"):
        keep_count(10, 0.0)


def test_selected_indices_are_the_top_scoring_patches():
    # [B=1, H=2, T=6, T=6]: [CLS] attends to patches 0..4 with head-averaged scores .05 .30 .10 .40 .15
    attn = torch.zeros(1, 2, 6, 6)
    attn[0, 0, 0, 1:] = torch.tensor([0.0, 0.4, 0.2, 0.3, 0.1])
    attn[0, 1, 0, 1:] = torch.tensor([0.1, 0.2, 0.0, 0.5, 0.2])
    scores = cls_attention(attn)
    assert torch.allclose(scores, torch.tensor([[0.05, 0.30, 0.10, 0.40, 0.15]]))
    assert top_tokens(scores, 2).tolist() == [[1, 3]]
    assert top_tokens(scores, 3).tolist() == [[1, 3, 4]]


def test_reduction_keeps_exact_counts_and_matches_hf_without_reduction():
    model = vit_model()
    vit = model.backbone.model
    use_eager_attention(vit)
    vit.eval()
    x = torch.randn(3, 3, 32, 32)
    features, alive = vit_forward(vit, x)
    assert torch.allclose(features, vit(pixel_values=x).last_hidden_state[:, 0], atol=1e-5)
    assert alive.shape == (3, 64)
    _, alive = vit_forward(vit, x, 0.7, (0, 1, 2))
    assert alive.shape == (3, token_schedule(64, 0.7, 3)[-1]) == (3, 23)
    assert all(len(set(row.tolist())) == 23 for row in alive)


def test_students_get_exactly_the_ticket_patches_with_their_positional_embeddings():
    vit = vit_model().backbone.model.eval()
    x = torch.randn(2, 3, 32, 32)
    full = embed_patches(vit, x, None)
    assert torch.allclose(full, vit.embeddings(x), atol=1e-5)  # same as Hugging Face's embeddings
    idx = torch.tensor([[0, 5, 63], [7, 8, 9]])
    sub = embed_patches(vit, x, idx)
    assert sub.shape == (2, 4, 32)
    assert torch.allclose(sub[:, 0], full[:, 0])
    for b in range(2):
        assert torch.allclose(sub[b, 1:], full[b, 1 + idx[b]], atol=1e-6)


class Spy:
    def __init__(self, model):
        self.seen = []
        original = patch_vit(model.backbone).forward  # the adapter the patch objectives install

        def forward(inputs):
            if isinstance(inputs, tuple) and model.training:
                self.seen.append(inputs[1].clone())
            return original(inputs)

        model.backbone.forward = forward


def test_ticket_student_trains_on_its_tickets_and_rc_on_fresh_random_patches():
    task = build_task("scenes_shape", SMALL)
    gen = torch.Generator().manual_seed(0)
    tickets = {s: torch.rand(len(getattr(task, s)), 64, generator=gen).topk(20, 1).indices.sort(1).values
               for s in ("train", "val", "test")}
    student = vit_model(seed=1, layers=2)
    spy = Spy(student)
    train_model(student, with_tickets(task, tickets), TrainConfig(optimizer="adamw", lr=1e-3, epochs=1, batch_size=32),
                seed=0, objective=TicketPatches())
    allowed = {tuple(row.tolist()) for row in tickets["train"]}
    assert sum(len(batch) for batch in spy.seen) == 64
    assert all(tuple(row.tolist()) in allowed for batch in spy.seen for row in batch)

    rc = vit_model(seed=1, layers=2)
    spy = Spy(rc)
    train_model(rc, task, TrainConfig(optimizer="adamw", lr=1e-3, epochs=2, batch_size=32), seed=0,
                objective=RandomPatches(20, 64))
    assert all(batch.shape[1] == 20 for batch in spy.seen)
    assert all(len(set(row.tolist())) == 20 for batch in spy.seen for row in batch)
    assert not torch.equal(spy.seen[0], spy.seen[2])  # a fresh draw for the same images next epoch


def test_ticket_files_round_trip_and_reject_other_data(tmp_path):
    task = build_task("scenes_shape", SMALL)
    selector = vit_model()
    patch_vit(selector.backbone).set_token_reduction(0.5)
    tickets = find_tickets(selector, task)
    assert tickets["train"].shape == (64, 8)
    path = tmp_path / "t.safetensors"
    save_tickets(path, tickets, task, 0.5, 64, 8, {"model": "vit"})
    loaded, meta = load_tickets(path, task, 64)
    assert all(torch.equal(loaded[s], tickets[s]) for s in tickets) and meta["kept"] == 8
    with pytest.raises(DataError, match="made for 64 patches per image but the student has 256"):
        load_tickets(path, task, 256)
    bigger = build_task("scenes_shape", {**SMALL, "n_train": 80})
    with pytest.raises(DataError, match="tickets for 64 train images but the dataset has 80"):
        load_tickets(path, bigger, 64)
    other = build_task("scenes_colour", SMALL)
    with pytest.raises(DataError, match="other data"):
        load_tickets(path, other, 64)


def test_select_cli_writes_tickets_and_a_picture(tmp_path, capsys):
    cfg = {"model": {"name": "vit", "options": {"config": VIT}}, "task": {"name": "scenes_shape", "options": SMALL},
           "keep_rate": 0.7, "finetune": {"optimizer": "adamw", "lr": 0.001, "epochs": 1, "batch_size": 32}}
    path = tmp_path / "select.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["select", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 0
    out = capsys.readouterr().out
    tickets_file = next((tmp_path / "runs").glob("select-*/tickets.safetensors"))
    assert str(tickets_file) in out
    assert (tickets_file.parent / "tickets.png").stat().st_size > 5_000
    meta = json.loads(tickets_file.with_suffix(".json").read_text())
    assert meta["kept"] == 23 and meta["selector"]["reduction_layers"] == [0, 1, 2]
    again = run_selection(dataclasses.replace(SelectorConfig(), **{
        "model": ModelConfig("vit", {"config": VIT}), "task": TaskConfig("scenes_shape", SMALL), "keep_rate": 0.7,
        "finetune": TrainConfig(optimizer="adamw", lr=0.001, epochs=1, batch_size=32)}), tmp_path / "runs", False)
    assert again == tickets_file  # same config: found, not recomputed


def test_selector_must_be_a_vit(tmp_path):
    from ticketlab.errors import ConfigError

    cfg = SelectorConfig(model=ModelConfig("resnet20", {"width": 4}), task=TaskConfig("scenes_shape", SMALL))
    with pytest.raises(ConfigError, match="patch tickets need a ViT"):
        run_selection(cfg, tmp_path)


@pytest.mark.slow
def test_patch_study_end_to_end(tmp_path, capsys):
    from pathlib import Path

    example = yaml.safe_load((Path(__file__).parent.parent / "examples" / "patch_tickets_study.yaml").read_text())
    small = {"n_train": 64, "n_val": 32, "n_test": 32}
    example["selector"]["task"]["options"] = dict(small)
    example["selector"]["model"]["options"]["config"].update(hidden_size=32, num_hidden_layers=4, intermediate_size=64)
    example["selector"]["finetune"].update(epochs=1)
    example["student"]["options"]["config"].update(hidden_size=32, num_hidden_layers=2, intermediate_size=64)
    example["train"].update(epochs=1)
    example["keep_rates"], example["seeds"], example["equal_budget_rates"] = [0.9, 0.5], [0, 1], [0.5]
    example["weight_seeds"], example["replicates"] = [0, 1], 1
    for run in example["weight_level"]:
        run["experiment"]["task"]["options"] = dict(small)
        run["experiment"]["train"].update(epochs=1)
        run["experiment"]["prune"]["rounds"] = 2
        if run["experiment"]["model"]["name"] == "vit":
            run["experiment"]["model"]["options"]["config"].update(hidden_size=32, num_hidden_layers=2,
                                                                   intermediate_size=64)
        else:
            run["experiment"]["model"]["options"]["width"] = 4
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(example))
    assert cli.main(["patch-study", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 0
    out = next((tmp_path / "runs").glob("patchstudy-*"))
    report = (out / "report.md").read_text()
    assert "| 0.5 | 8/64 | ticket |" in report and "| 0.5 | 8/64 | rc_budget |" in report
    assert "| 0.5 | 8/64 | position |" in report  # the position-only control
    assert "Weight-level IMP vs random re-initialisation" in report
    assert "| IMP − re-init: CNN clearly > 0, ViT ≈ 0 |" in report  # claim 1's verdict row, two seeds each
    from ticketlab.paths import RUN_PREFIX
    assert len(list((tmp_path / "runs").glob(f"{RUN_PREFIX}*"))) == 4  # two architectures x two seeds
    assert "## Verdicts" in report and "| ticket students beat random-patch (RC) students at k = 0.5, sparse" in report
    verdicts = json.loads((out / "verdicts.json").read_text())["rows"]
    students, (claim1,) = verdicts[:4], verdicts[4:]  # 2 keep rates x 2 modes, then claim 1 (weight level)
    assert all(len(r["a"]) == 2 == len(r["b"]) for r in students)
    assert claim1["rule"] == "imp_vs_reinit" and len(claim1["cnn"]) == 2 == len(claim1["vit"])  # one gap per seed
    assert cli.main(["verdicts", str(out)]) == 0  # re-derived from verdicts.json alone
    assert_figure(out / "students.png")
    assert_figure(out / "weight_level.png")
    rows = json.loads((out / "students.json").read_text())
    assert len(rows) == 2 * (3 + 4)  # seeds x (ticket, rc, position at 0.9; + rc_budget at 0.5)
    budget = next(r for r in rows if r["variant"] == "rc_budget")
    assert budget["epochs"] == 8  # 1 / 0.5^3
    assert all(r["scored"] == "final epoch" for r in rows)
    assert all(0 <= score(r, "test_selector_patches") <= 1 for r in rows if r["variant"] == "rc")  # a named score
    assert all(r["selector_test_score"] is not None for r in rows)  # the selector's own accuracy is reported
    # the compute line counts every training: students, the 2 selectors, 4 weight-level runs x (3 IMP + 2 re-init)
    assert f"compute of every training behind this report: {len(rows) + 2 + 4 * 5} units" in report


def test_cross_fitting_a_selector_never_picks_tickets_of_images_it_was_trained_on(monkeypatch):
    import ticketlab.studies.patch_selection as study
    task = build_task("scenes_shape", {"n_train": 40, "n_val": 8, "n_test": 8})
    cfg = study.SelectorConfig(model=ModelConfig("vit", {"config": {"hidden_size": 16, "num_hidden_layers": 3,
                                                                   "num_attention_heads": 2, "intermediate_size": 32,
                                                                   "image_size": 32, "patch_size": 8}}),
                               keep_rate=0.5, finetune=TrainConfig(epochs=1, batch_size=20, lr=1e-3, optimizer="adamw"))
    trained = []
    original = study.fine_tune_selector

    def spy(cfg, half, folder, label, progress):
        model, metrics = original(cfg, half, folder, label, progress)
        trained.append((model, {tuple(x.flatten().tolist()[:64]) for x in half.train.x}))
        return model, metrics

    monkeypatch.setattr(study, "fine_tune_selector", spy)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _, tickets, _ = study.cross_fitted_tickets(cfg, task, Path(tmp) / "sel", progress=False)
    (model_a, seen_a), (model_b, seen_b) = trained
    assert not seen_a & seen_b and len(seen_a) + len(seen_b) == 40  # two disjoint halves of the training images
    from_b = find_tickets(model_b, task, splits=("train",))["train"]
    from_a = find_tickets(model_a, task, splits=("train",))["train"]
    for i, image in enumerate(task.train.x):
        key = tuple(image.flatten().tolist()[:64])
        expected = from_b[i] if key in seen_a else from_a[i]  # the selector that did not train on the image
        assert torch.equal(tickets["train"][i], expected)


def test_claim1_rule_on_hand_built_gaps():
    from ticketlab.stats import Interval
    from ticketlab.studies.verdict_file import imp_vs_reinit_record, imp_vs_reinit_verdict, recompute
    from ticketlab.studies.verdicts import reference_problem

    cnn_wins = Interval(0.05, 0.03, 0.07, 3)
    assert imp_vs_reinit_verdict(cnn_wins, Interval(0.005, -0.01, 0.02, 3)) == "reproduced"
    assert imp_vs_reinit_verdict(Interval(-0.05, -0.07, -0.03, 3), Interval(0.0, -0.01, 0.01, 3)) == "contradicted"
    assert imp_vs_reinit_verdict(cnn_wins, Interval(0.12, 0.1, 0.14, 3)) == "contradicted"
    assert imp_vs_reinit_verdict(Interval(0.01, -0.02, 0.04, 3), Interval(0.0, -0.01, 0.01, 3)) == "inconclusive"
    assert imp_vs_reinit_verdict(cnn_wins, Interval(0.0, -0.01, 0.01, 3), usable=False) == "inconclusive"
    # the references: ceiling, the binomial rule (36 % on 1,000 images is within 2 SE = 3.0 pts of a 35 % majority)
    # and convergence each make the claim inconclusive
    assert reference_problem({"ci": Interval(0.995, 0.99, 1.0, 3), "chance_test": 0.35}) == "at ceiling"
    assert reference_problem({"ci": Interval(0.36, 0.33, 0.39, 3), "chance_test": 0.35, "n_test": 1000}) == "at chance"
    assert reference_problem({"ci": Interval(0.6, 0.58, 0.62, 3), "chance_test": 0.35, "n_test": 1000,
                              "converged": False}) == "not converged"
    # recomputed from the per-seed gaps alone (as `ticketlab verdicts` does): CNN +4, +5, +6 pts, ViT ±1 pt
    record = imp_vs_reinit_record([0.04, 0.05, 0.06], [-0.01, 0.0, 0.01], usable=True)
    assert recompute(record) == "reproduced" and recompute({**record, "usable": False}) == "inconclusive"
    assert recompute({**record, "cnn": []}) == "inconclusive"  # weight-level runs without a re-init baseline


def test_a_patch_claim_with_an_unconverged_ticket_student_is_inconclusive():
    """The usable rule of every study's comparisons: a gap wholly above 0 decides only when the ticket students
    (the A side) converged and no student is at chance."""
    from ticketlab.studies.patch_report import summarize_students, verdict_rows

    def rows(ticket_converged: bool) -> list[dict]:
        out = []
        for unit, (t, r) in zip((0, 1000, 2000), ((0.70, 0.50), (0.72, 0.51), (0.71, 0.52)), strict=True):
            for variant, acc, conv in (("ticket", t, ticket_converged), ("rc", r, True)):
                out.append({"keep_rate": 0.7, "variant": variant, "seed": unit, "converged": conv, "patches": 23,
                            "num_patches": 64, "chance_test": 0.346, "n_test": 1000, "selector_test_score": 0.6,
                            "result_version": 1, "metric": "accuracy",
                            "score": {"test": acc, "test_all_patches": acc, "test_kept_patches": acc}})
        return out

    good = verdict_rows(rows(True), summarize_students(rows(True)))
    assert [row[-1] for row in good] == ["reproduced", "reproduced"]  # +19.67 pts over 3 units, both evaluations
    bad = verdict_rows(rows(False), summarize_students(rows(False)))
    assert [row[-1] for row in bad] == ["inconclusive", "inconclusive"]
    assert "a ticket student not converged" in bad[0][2] and bad[0][1] == good[0][1]
