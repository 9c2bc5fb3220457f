"""Everyday friction (issue 21): a CLI that starts without torch, errors that suggest the fix and report every
config problem at once, divergence caught in runs shorter than the reference window, non-finite numbers
rejected, complete `list` descriptions, a recorded thread count and plain progress lines in logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny_config
from ticketlab import cli
from ticketlab.config import config_hash, parse_config
from ticketlab.errors import ConfigError

HEAVY = ("torch", "transformers", "accelerate", "safetensors")


def modules_after(args: list[str], env: dict[str, str], cwd: str) -> tuple[list[str], str]:
    """Run the CLI in a fresh interpreter; return the heavy modules it imported and what it printed."""
    script = ("import sys\nfrom ticketlab.cli import main\ncode = main(sys.argv[1:])\n"
              f"print('HEAVY:', [m for m in {HEAVY!r} if m in sys.modules], code)")
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=cwd,
                         timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY:")]
    assert line, out.stdout + out.stderr
    return json.loads(line[0].split(":", 1)[1].rsplit(" ", 1)[0].replace("'", '"')), out.stdout


def test_help_ls_show_verify_and_a_cached_list_import_neither_torch_nor_transformers(tmp_path):
    env = {**os.environ, "TICKETLAB_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    with pytest.raises(SystemExit):  # --help exits after printing
        cli.main(["--help"])
    for args in (["ls", "--runs-dir", str(tmp_path)], ["verify", "--runs-dir", str(tmp_path)]):
        heavy, _ = modules_after(args, env, str(tmp_path))
        assert heavy == [], (args, heavy)
    modules_after(["list"], env, str(tmp_path))  # the first `list` builds the catalog cache
    heavy, out = modules_after(["list", "models"], env, str(tmp_path))
    assert heavy == [] and "resnet20" in out
    script = "import sys\nfrom ticketlab import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n" \
             f"print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_every_list_entry_has_a_complete_one_line_description():
    script = "import json\nfrom ticketlab.plugins import catalog\nprint(json.dumps(catalog()))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # a fresh process: the built-in entries only
    catalog = json.loads(out.stdout.strip().splitlines()[-1])
    assert sum(len(entries) for entries in catalog.values()) > 80
    for kind, entries in catalog.items():
        for name, text in entries:
            assert text and text.endswith((".", "!", "?")) and "\n" not in text, (kind, name, text)
            assert text.count("(") == text.count(")"), (kind, name, text)  # never cut mid-parenthesis


def test_misspelt_command_kind_key_and_name_get_the_closest_valid_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fnd", "x.yaml"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "unknown command 'fnd' (did you mean 'find'?)" in err
    assert cli.main(["list", "modles"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown kind 'modles' (did you mean 'models'?)" in err
    cfg = tiny_config(train={"lr": 0.05, "epochs": 1, "batch_sise": 32}, model={"name": "resnet2"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["find", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.batch_sise' (did you mean 'batch_size'?)" in err
    assert "unknown model 'resnet2' (did you mean 'resnet20'" in err
    assert not (tmp_path / "runs").exists()  # bad input writes nothing


def test_a_config_with_several_problems_reports_them_all_each_on_its_own_line(tmp_path, capsys):
    cfg = tiny_config(train={"lr": float("nan"), "epochs": 0, "batch_size": 32, "weight_decay": -1, "gama": 0.1},
                      prune={"rounds": 1, "rewnd": "init", "method": "global_magnitud"}, baselines=["omp", "random"],
                      engine={"threads": -2})
    cfg["task"]["options"]["n_train"] = float("inf")
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    problems = info.value.problems
    for needle in ("train.lr must be a finite number", "train.epochs must be > 0", "train.weight_decay must be >= 0",
                   "'train.gama' (did you mean 'gamma'?)", "'prune.rewnd' (did you mean 'rewind'?)",
                   "engine.threads must be >= 0", "task.options.n_train must be a finite number",
                   "unknown pruning method 'global_magnitud'", "unknown baseline 'random'"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["find", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"ticketlab: error: {len(problems)} problems in the config; fix them all, then re-run:"
    assert len(lines) == len(problems) + 1 and all(line.startswith("ticketlab: error: ") for line in lines)


@pytest.mark.parametrize("text", ["lr: .nan", "lr: .inf", "lr: -.inf", "lr: nan"])
def test_non_finite_numbers_are_rejected_by_the_config_check(text):
    cfg = tiny_config()
    cfg["train"].update(yaml.safe_load(text))
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number"):
        parse_config(cfg)
    cfg = tiny_config(objective_options={"margin": float("nan")})
    with pytest.raises(ConfigError, match=r"objective_options.margin must be a finite number"):
        parse_config(cfg)


def test_a_three_step_diverging_run_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tiny_config(train={"lr": 3000.0, "epochs": 1, "batch_size": 32}, baselines=[])  # 96 examples: 3 steps
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["find", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lower train.lr" in err, err
    assert "diverged" in err or "became nan" in err
    assert not list((tmp_path / "runs").glob("imp-*/rounds/round_000"))  # no diverged result saved as a round


def test_threads_are_hashed_when_set_recorded_with_results_and_shown(tmp_path, capsys):
    auto, two = parse_config(tiny_config()), parse_config(tiny_config(engine={"threads": 1}))
    assert config_hash(auto) != config_hash(two)
    cfg = tiny_config(engine={"threads": 1}, baselines=[], prune={"rounds": 1, "rewind": "init"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["find", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "runs" / os.path.basename(run) / "rounds/round_001/metrics.json").read_text())
    assert metrics["threads"] == 1
    assert cli.main(["show", run]) == 0
    assert "1 CPU thread(s) per process" in capsys.readouterr().out


def test_progress_to_a_file_is_plain_lines_without_escape_codes(tmp_path):
    cfg = tiny_config(baselines=[], prune={"rounds": 1, "rewind": "init"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TICKETLAB_PROGRESS_SECONDS": "0", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "ticketlab", "find", str(path), "--runs-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stderr + out.stdout and "\r" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if "sample" in line]
    assert lines and all("sample/s" in line for line in lines)
    assert any("done in" in line and "val=" in line for line in lines)
