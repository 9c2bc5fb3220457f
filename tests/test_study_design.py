"""Study designs that can support a claim: disjoint pre-training / downstream data, independent θ0."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ticketlab.errors import ConfigError
from ticketlab.studies import study_config
from ticketlab.studies.cv_pretraining import pretraining_configs

EXAMPLE = yaml.safe_load((Path(__file__).parent.parent / "examples" / "cv_pretraining_study.yaml").read_text())


def test_downstream_scenes_must_not_be_the_pretraining_scenes():
    from ticketlab.data.base import build_task

    study = study_config("cv_pretraining", EXAMPLE)  # the shipped study passes
    pre = build_task(study.pretrainings[0].task.name, {**study.pretrainings[0].task.options, "n_train": 50})
    down = build_task(study.downstream[0].name, {**study.downstream[0].options, "n_train": 50})
    assert not any((pre.train.x == image).flatten(1).all(1).any() for image in down.train.x)  # no shared image
    shared = {**EXAMPLE, "downstream": [{"name": "scenes_shape", "options": {"n_train": 300}}],  # seed 0 = pre-training's
              "claims": {}}
    with pytest.raises(ConfigError, match="draws the scenes pre-training 'supervised' trains on"):
        study_config("cv_pretraining", shared)


def test_each_pretraining_starts_from_its_own_init_unless_shared():
    configs = pretraining_configs(study_config("cv_pretraining", {**EXAMPLE, "replicates": 1}))
    theta0 = {label: {cfg.pretrain.seed for (lb, _), cfg in configs.items() if lb == label} for label, _ in configs}
    assert all(len(seeds) == 1 for seeds in theta0.values())  # one θp per pre-training, shared by its IMP seeds
    assert len({next(iter(seeds)) for seeds in theta0.values()}) == 3  # ... each from its own θ0
    assert len({cfg.seed for cfg in configs.values()}) == len(configs) == 3 * len(EXAMPLE["seeds"])  # mask seeds
    shared = pretraining_configs(study_config("cv_pretraining", {**EXAMPLE, "share_init": True, "replicates": 1}))
    assert {cfg.pretrain.seed for cfg in shared.values()} == {EXAMPLE.get("seed", 0)}


@pytest.mark.parametrize("objective", ["supervised", "simclr"])
def test_pretrained_heads_are_saved_with_theta_p_and_rewound_in_pretraining_task_imp(tmp_path, monkeypatch, objective):
    import torch

    import ticketlab.experiment as experiment
    from tests.conftest import TINY_SCENES, tiny_config
    from ticketlab.config import parse_config
    from ticketlab.runfolders import load_theta_p
    from ticketlab.tensorfiles import load_tensors

    task = {"name": "scenes_shape", "options": dict(TINY_SCENES)}
    train = {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 48}
    cfg = tiny_config(task=task, objective=objective, baselines=[], prune={"rounds": 1},
                      pretrain={"objective": objective, "task": task, "train": train})
    seen = []
    original = experiment.train_model

    def spy(*args, **kwargs):
        seen.append(kwargs.get("objective_state"))
        return original(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_model", spy)
    run = experiment.run_experiment(parse_config(cfg), tmp_path, progress=False)
    (heads_file,) = tmp_path.glob("pretrain-*/heads.safetensors")
    saved = load_tensors(heads_file)[0]
    theta_p = load_theta_p(run)
    assert all(torch.equal(theta_p[k], v) for k, v in saved.items() if k.startswith("head."))  # the head is in θp
    if objective == "simclr":
        projector = {k.removeprefix("objective."): v for k, v in saved.items() if k.startswith("objective.")}
        assert projector and len(seen) == 2  # round 0 and round 1 both start from the pre-trained projector
        assert all(torch.equal(state[k], v) for state in seen for k, v in projector.items())
    else:
        assert seen == [None, None]  # supervised has no objective parts


def test_replicates_are_independent_pretrainings_with_seeds_nested_and_replicate_0_unchanged():
    from ticketlab.studies.cv_pretraining import downstream_configs, replicate_of, units

    one = study_config("cv_pretraining", {**EXAMPLE, "replicates": 1})
    three = study_config("cv_pretraining", {**EXAMPLE, "replicates": 3})
    assert units(three) == [s + 1000 * r for r in range(3) for s in EXAMPLE["seeds"]]
    configs = pretraining_configs(three)
    for label in ("supervised", "simclr", "moco"):
        theta_p = {replicate_of(u): cfg.pretrain.seed for (lb, u), cfg in configs.items() if lb == label}
        assert len(set(theta_p.values())) == 3  # one θp per replicate: its own θ0 and data order
        per_unit = {u: cfg.pretrain.seed for (lb, u), cfg in configs.items() if lb == label}
        assert all(per_unit[u] == theta_p[replicate_of(u)] for u in per_unit)  # the seeds of a replicate share it
    assert all(configs[key] == cfg for key, cfg in pretraining_configs(one).items())  # replicate 0 = the old runs
    assert set(downstream_configs(three)) >= {(lb, t, u) for (lb, t, u) in downstream_configs(one)}
    for bad, words in (({"replicates": 0}, "replicates must be >= 1"),
                       ({"replicates": 2, "seeds": [0, 1000]}, "seeds must lie in 0..999")):
        with pytest.raises(ConfigError, match=words):
            study_config("cv_pretraining", {**EXAMPLE, **bad})


def test_overlap_claim_is_judged_over_replicate_pairs_against_the_papers_bound():
    from ticketlab.studies.cv_report import overlap_row

    names = {(label, u): f"{label} u{u}" for label in ("a", "b") for u in (0, 1000, 2000)}

    def overlaps(ious):
        out = {}
        for r, iou in enumerate(ious):
            out[(f"a u{1000 * r}", f"b u{1000 * r}")] = {"iou": iou, "chance_iou": 0.2}
        return out

    low = overlap_row(overlaps([0.030, 0.035, 0.040]), names, 0)
    assert low[-1] == "reproduced" and low.record["drops"] == [0.030, 0.035, 0.040]  # 3.5 [2.3, 4.7] % < 6.55 %
    high = overlap_row(overlaps([0.27, 0.28, 0.29]), names, 0)
    assert high[-1] == "contradicted" and "above chance" in high[-2]
    assert overlap_row(overlaps([0.02, 0.10, 0.06]), names, 0)[-1] == "inconclusive"  # straddles 6.55 %
    single = {k: v for k, v in names.items() if k[1] == 0}
    assert overlap_row(overlaps([0.03]), single, 0)[-1] == "inconclusive"  # one replicate: no interval


def test_vl_study_replicates_give_each_unit_its_own_theta_p_replicate():
    from ticketlab.studies.vl_tickets import pretraining_configs as vl_pretraining
    from ticketlab.studies.vl_tickets import task_configs, transfer_specs

    example = yaml.safe_load((Path(__file__).parent.parent / "examples" / "vl_tickets_study.yaml").read_text())
    example = {**example, "seeds": [0, 1, 2]}
    one = study_config("vl_tickets", {**example, "replicates": 1})
    two = study_config("vl_tickets", {**example, "replicates": 2})
    seeds = {u: cfg.pretrain.seed for u, cfg in vl_pretraining(two).items()}
    assert sorted(seeds) == [0, 1, 2, 1000, 1001, 1002] and len(set(seeds.values())) == 2  # one θp per replicate
    assert all(vl_pretraining(two)[u] == cfg for u, cfg in vl_pretraining(one).items())  # replicate 0 unchanged
    assert {u for _, u in task_configs(two)} == set(seeds) and {s for s, *_ in transfer_specs(two)} == set(seeds)
    with pytest.raises(ConfigError, match="released checkpoint"):
        study_config("vl_tickets", {**example, "replicates": 2, "theta_p_from_checkpoint": True})


def test_universal_ticket_claims_need_theta_p_above_chance_on_every_pretraining_objective():
    from ticketlab.studies.verdict_file import recompute
    from ticketlab.studies.vl_report import drop_row, theta_p_problem

    def unit(itm: float) -> dict:
        metrics = {"test_mlm_acc": 0.60, "test_mlm_chance": 0.10, "test_mlm_n": 800,
                   "test_itm_acc": itm, "test_itm_chance": 0.50, "test_itm_n": 500,
                   "test_mrm_acc": 0.55, "test_mrm_chance": 0.20, "test_mrm_n": 900}
        return {"rounds": [{"round": 0, "metrics": metrics}]}

    # ITM 52 % on 500 targets: within 2 binomial SE (4.5 pts) of 50 % -> at chance; 58 % is not
    assert theta_p_problem({0: unit(0.52), 1000: unit(0.53), 2000: unit(0.51)}).startswith("θp at chance on ITM 52.0")
    assert theta_p_problem({0: unit(0.58), 1000: unit(0.57), 2000: unit(0.59)}) is None
    assert theta_p_problem({0: {"rounds": [{"round": 0, "metrics": {"test_itm_acc": 0.5}}]}}) is None  # old runs
    drops = [0.001, 0.002, 0.0]  # well under the paper's 1.88 pts
    row = drop_row(0.6, 1.88, drops, "θp at chance on ITM 52.0 % vs chance 50.0 %")
    assert row[-1] == "inconclusive" and recompute(row.record) == "inconclusive"
    ok = drop_row(0.6, 1.88, drops)
    assert ok[-1] == "reproduced" and recompute(ok.record) == "reproduced"
    empty = drop_row(0.6, 1.88, [], None, {"vl_vqa": "not converged"})
    assert empty[-1] == "inconclusive" and recompute(empty.record) == "inconclusive"
    assert "no task with a usable dense reference" in empty[3] and "vl_vqa left out (dense not converged)" in empty[3]


def test_patch_study_replicates_give_each_unit_its_own_selector(tmp_path):
    from ticketlab.config import config_hash
    from ticketlab.studies.patch_tickets import check_patch_study, patch_study_jobs, selector_for

    example = yaml.safe_load((Path(__file__).parent.parent / "examples" / "patch_tickets_study.yaml").read_text())
    example = {**example, "weight_level": [], "keep_rates": [0.7], "replicates": 1, "seeds": [0, 1, 2]}
    one = study_config("patch_tickets", example)
    three = study_config("patch_tickets", {**example, "replicates": 3, "seeds": [0]})
    check_patch_study(three)
    assert selector_for(three, 0.7, 0) == selector_for(one, 0.7, 1)  # replicate 0 keeps the configured selector
    seeds = {selector_for(three, 0.7, u).seed for u in (0, 1000, 2000)}
    assert len(seeds) == 3 and three.selector.seed in seeds
    jobs = patch_study_jobs(three, tmp_path)
    selectors = [j for j in jobs if j.kind == "select"]
    students = [j for j in jobs if j.kind == "patch_student"]
    assert len(selectors) == 3 and {j.payload["seed"] for j in students} == {0, 1000, 2000}
    for job in students:  # every student waits for (and reads) its own replicate's selector
        (selector_id,) = job.after
        expected = selector_for(three, 0.7, job.payload["seed"])
        assert selector_id.endswith(config_hash(expected))
    with pytest.raises(ConfigError, match="no finetune"):
        check_patch_study(study_config("patch_tickets", {**example, "replicates": 2,
                                                         "selector": {**example["selector"], "finetune": None}}))
    with pytest.raises(ConfigError, match="replicates must be >= 1"):
        check_patch_study(study_config("patch_tickets", {**example, "replicates": 0}))
