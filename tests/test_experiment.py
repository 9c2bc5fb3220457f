import json

import pytest
import torch

from tests.conftest import TINY_SCENES, tiny_config
from ticketlab import cli
from ticketlab.baselines import BASELINES
from ticketlab.config import config_hash, parse_config
from ticketlab.data import build_task
from ticketlab.experiment import run_dir_for, run_experiment
from ticketlab.masks import Mask
from ticketlab.pretrain import PretrainRun
from ticketlab.pruning import target_pruned_count
from ticketlab.results import score
from ticketlab.rewind import REWIND_POINTS
from ticketlab.run_context import RunContext
from ticketlab.runfolders import load_run
from ticketlab.store import ResultStore
from ticketlab.tensorfiles import load_tensors


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = parse_config(tiny_config(
        pretrain={"task": {"name": "scenes_colour", "options": dict(TINY_SCENES)},
                  "train": {"lr": 0.05, "epochs": 1, "batch_size": 32}},
    ))
    return cfg, runs, run_experiment(cfg, runs, progress=False)


def test_round_sparsities_follow_the_schedule_exactly(finished):
    cfg, _, run_dir = finished
    run = load_run(run_dir)
    assert [r["round"] for r in run["rounds"]] == [0, 1, 2]
    for row, expected in zip(run["rounds"], [0.0, 0.2, 0.36], strict=True):
        mask = Mask.load(run_dir / row["mask"])
        assert mask.num_pruned() == target_pruned_count(expected, mask.num_total())
        assert row["metrics"]["target_sparsity"] == pytest.approx(expected)
    assert set(run["baselines"]) == {"omp", "random_prune", "random_reinit", "reversed"}
    for rows in run["baselines"].values():
        assert [r["round"] for r in rows] == [1, 2]


def test_saved_weights_are_zero_where_pruned_and_masks_nest(finished):
    _, _, run_dir = finished
    previous = None
    kept = [k for k in range(3) if (run_dir / f"rounds/round_{k:03d}/weights.safetensors").is_file()]
    assert kept == [0, 2]  # keep: needed — round 0 (OMP, 'trained' rewind) and the last round
    for k in range(3):
        mask = Mask.load(run_dir / f"rounds/round_{k:03d}/mask.safetensors")
        if k in kept:
            weights, _ = load_tensors(run_dir / f"rounds/round_{k:03d}/weights.safetensors")
            for name, keep in mask.tensors.items():
                assert torch.count_nonzero(weights[name][~keep]) == 0
        if previous is not None:
            assert all(not torch.any(keep & ~previous.tensors[name]) for name, keep in mask.tensors.items())
        previous = mask


def test_rewinding_restores_pretrained_weights(finished):
    cfg, runs, run_dir = finished
    pretrain_dir = runs / f"pretrain-{config_hash(PretrainRun(cfg.model, cfg.pretrain, cfg.seed))}"
    pretrained, meta = load_tensors(pretrain_dir / "backbone.safetensors")
    assert meta["objective"] == "supervised"
    ctx = RunContext(cfg, run_dir, build_task(cfg.task.name, cfg.task.options))
    theta_p = REWIND_POINTS.get("pretrained")(ctx)
    mask = ctx.imp_mask(2)
    for name, value in pretrained.items():
        assert torch.equal(theta_p[f"backbone.{name}"], value), name
    model = ctx.fresh_model()
    model.load_state_dict(theta_p)
    mask.apply_(model)
    params = dict(model.named_parameters())
    for name, keep in mask.tensors.items():
        assert torch.equal(params[name][keep], pretrained[name.removeprefix("backbone.")][keep])
    trained = REWIND_POINTS.get("trained")(ctx)
    assert any(not torch.equal(trained[k], theta_p[k]) for k in mask.names()), "round 0 should have trained"


def test_baselines_are_what_they_claim(finished):
    cfg, _, run_dir = finished
    imp2 = Mask.load(run_dir / "rounds/round_002/mask.safetensors")
    reinit = Mask.load(run_dir / "baselines/random_reinit/round_002/mask.safetensors")
    reverse = Mask.load(run_dir / "baselines/reversed/round_002/mask.safetensors")
    rp = Mask.load(run_dir / "baselines/random_prune/round_002/mask.safetensors")
    omp = Mask.load(run_dir / "baselines/omp/round_002/mask.safetensors")
    assert reinit == imp2
    assert reverse == imp2.complement()
    assert rp.num_pruned() == omp.num_pruned() == imp2.num_pruned()
    assert rp != imp2


def test_rerun_resumes_without_recomputing(finished):
    cfg, runs, run_dir = finished
    stamp = (run_dir / "rounds/round_002/metrics.json").stat().st_mtime_ns
    assert run_experiment(cfg, runs, progress=False) == run_dir
    assert (run_dir / "rounds/round_002/metrics.json").stat().st_mtime_ns == stamp
    assert (run_dir / "sparsity_accuracy.png").stat().st_size > 10_000


def test_store_lists_the_run(finished):
    _, runs, run_dir = finished
    rows = ResultStore(runs).runs()
    row = next(r for r in rows if r["run_id"] == run_dir.name)
    assert row["status"] == "done" and row["rounds"] == 3
    assert row["max_sparsity"] == pytest.approx(0.36, abs=1e-4)
    results = ResultStore(runs).results(run_dir.name)
    assert len(results) == 3 + 4 * 2


def test_cli_show_json_and_ls(finished, capsys):
    _, runs, run_dir = finished
    assert cli.main(["show", run_dir.name, "--runs-dir", str(runs), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["model"]["name"] == "resnet20"
    assert shown["rounds"][1]["round"] == 1
    assert shown["rounds"][1]["mask"] == "rounds/round_001/mask.safetensors"
    assert (run_dir / shown["rounds"][1]["mask"]).is_file()
    stored = json.loads((run_dir / "rounds/round_001/metrics.json").read_text())
    assert score(shown["rounds"][1]["metrics"]) == score(stored)
    assert shown["rounds"][1]["metrics"]["sparsity"] == pytest.approx(0.2, abs=1e-4)
    assert shown["baselines"]["omp"][0]["sparsity"] == pytest.approx(0.2, abs=1e-4)
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    assert run_dir.name in capsys.readouterr().out


def test_hash_ignores_fields_left_at_default(tmp_path):
    a = parse_config(tiny_config())
    explicit = tiny_config()
    explicit["prune"] = {"rounds": 2, "method": "global_magnitude", "rate": 0.2, "rewind": "init", "rewind_steps": 0}
    explicit["deterministic"] = False
    b = parse_config(explicit)
    assert config_hash(a) == config_hash(b)
    assert run_dir_for(a, tmp_path) == run_dir_for(b, tmp_path)
    c = parse_config(tiny_config(seed=4))
    assert config_hash(a) != config_hash(c)


def test_cli_prunable_lists_weights(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny_config()))
    assert cli.main(["prunable", str(path)]) == 0
    out = capsys.readouterr().out
    assert "backbone.layer1.0.conv1.weight" in out
    assert "backbone.conv1.weight" not in out and "head.weight" not in out
    assert "20 tensors" in out  # 9 blocks x 2 convs + 2 shortcut convs; the stem is excluded


def test_packaged_demo_config_is_valid():
    from importlib import resources

    from ticketlab.config import load_config

    cfg = load_config(str(resources.files("ticketlab") / "configs" / "demo.yaml"))
    assert cfg.pretrain is not None and cfg.prune.rounds >= 5
    assert set(cfg.baselines) == {"omp", "random_prune", "random_reinit"}


def test_cli_pretrain_writes_a_checkpoint_every_command_accepts(tmp_path, capsys):
    cfg = tiny_config(pretrain={"task": {"name": "digits"}, "train": {"epochs": 1, "batch_size": 64}})
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert cli.main(["pretrain", str(path), "--runs-dir", str(tmp_path), "-q"]) == 0
    checkpoint = tmp_path / capsys.readouterr().out.strip().split(str(tmp_path) + "/")[-1]
    tensors, meta = load_tensors(checkpoint)
    assert meta["objective"] == "supervised" and meta["task"] == "digits"
    assert "layer1.0.conv1.weight" in tensors and not any(k.startswith("head") for k in tensors)
    # ... and it is accepted as θp by model.checkpoint
    as_theta_p = tiny_config(model={"name": "resnet20", "options": {"width": 4}, "checkpoint": str(checkpoint)},
                             baselines=[], prune={"rounds": 1})
    run_dir = run_experiment(parse_config(as_theta_p), tmp_path, progress=False)
    theta_p, _ = load_tensors(run_dir / "init/theta_p.safetensors")
    assert torch.equal(theta_p["backbone.layer2.0.conv1.weight"], tensors["layer2.0.conv1.weight"])
    bad = tmp_path / "nopretrain.yaml"
    bad.write_text(json.dumps(tiny_config()))
    assert cli.main(["pretrain", str(bad), "--runs-dir", str(tmp_path), "-q"]) == 2


def test_find_on_an_existing_run_folder_resumes_it(finished, capsys):
    _, _, run_dir = finished
    stamp = (run_dir / "rounds/round_001/metrics.json").stat().st_mtime_ns
    assert cli.main(["find", str(run_dir), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir)
    assert (run_dir / "rounds/round_001/metrics.json").stat().st_mtime_ns == stamp


def test_random_reinit_draws_a_new_initialisation(finished):
    cfg, _, run_dir = finished
    ctx = RunContext(cfg, run_dir, build_task(cfg.task.name, cfg.task.options))
    theta0 = REWIND_POINTS.get("init")(ctx)
    redrawn = BASELINES.get("random_reinit")(ctx, 1)[1]
    name = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(theta0[name], redrawn[name])
    assert torch.equal(theta0["head.weight"], redrawn["head.weight"])  # the head init is the run's, as in IMP


def test_early_rewind_point_is_the_snapshot_after_k_steps(tmp_path):
    from ticketlab.errors import ConfigError

    cfg = parse_config(tiny_config(prune={"rounds": 1, "rewind": "early", "rewind_steps": 2}, baselines=[]))
    run_dir = run_experiment(cfg, tmp_path, progress=False)
    early, meta = load_tensors(run_dir / "rounds/round_000/rewind_early.safetensors")
    assert meta["step"] == 2
    ctx = RunContext(cfg, run_dir, build_task(cfg.task.name, cfg.task.options))
    name = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(early[name], ctx.pretrained_state()[name])
    assert not torch.equal(early[name], ctx.imp_weights(0)[name])
    too_late = parse_config(tiny_config(prune={"rounds": 1, "rewind": "early", "rewind_steps": 4}, baselines=[]))
    with pytest.raises(ConfigError, match="exceeds the 3 steps"):
        run_experiment(too_late, tmp_path, progress=False)


@pytest.mark.parametrize("source", ["final", "best"])
def test_imp_prunes_from_the_end_of_training_weights_by_default(tmp_path, source):
    from ticketlab.pruning import prune

    cfg = tiny_config(train={"optimizer": "sgd", "lr": 0.3, "epochs": 3, "batch_size": 32}, baselines=[],
                      prune={"rounds": 1, "weights": source} if source == "best" else {"rounds": 1}, keep="all")
    run_dir = run_experiment(parse_config(cfg), tmp_path, progress=False)
    round0 = run_dir / "rounds/round_000"
    assert (round0 / "final_weights.safetensors").is_file() == (source == "final")
    weights = load_tensors(round0 / ("final_weights.safetensors" if source == "final" else "weights.safetensors"))[0]
    dense = Mask.load(round0 / "mask.safetensors")
    expected = prune("global_magnitude", weights, dense, 0.2, torch.Generator().manual_seed(3 * 7919 + 1))
    assert Mask.load(run_dir / "rounds/round_001/mask.safetensors").digest() == expected.digest()
    metrics = json.loads((round0 / "metrics.json").read_text())
    assert score(metrics, "val") == max(json.loads(line)["val_score"] for line in
                                     (round0 / "metrics.jsonl").read_text().splitlines())  # reported: best-val
