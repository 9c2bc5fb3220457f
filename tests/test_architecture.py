"""The one-way architecture: every module imports first in a fresh interpreter, no import cycles,
registries are leaves, one aggregator registers the plug-ins, and the registry's re-registration rule."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from ticketlab.errors import ConfigError
from ticketlab.registry import Registry

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "ticketlab"
LEAF_REGISTRIES = ["ticketlab.registry", "ticketlab.models.base", "ticketlab.data.base", "ticketlab.objectives.base",
                   "ticketlab.pruning.base", "ticketlab.baselines.base", "ticketlab.studies.base", "ticketlab.metrics",
                   "ticketlab.rewind", "ticketlab.schedules", "ticketlab.jobs"]


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, module_level_only: bool, type_only: bool = False) -> set[str]:
    """ticketlab modules ``name`` imports (``from a.b import c`` counts a.b and a.b.c if c is a module);
    ``type_only``: the imports under ``if TYPE_CHECKING:`` count too."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not type_only:
            continue
        nodes += list(ast.walk(node)) if (not module_level_only or isinstance(node, ast.If | ast.Try)) else [node]
    found: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in n.names}
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_the_static_checker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level():
    graph = {m: imports_of(m, module_level_only=True) for m in MODULES}
    assert find_cycle(graph) is None


def test_no_import_points_upwards_even_inside_functions():
    """With function-level imports counted too the graph is still acyclic: every import points one way."""
    graph = {m: imports_of(m, module_level_only=False) for m in MODULES}
    assert find_cycle(graph) is None


def test_no_cycle_even_through_type_only_imports():
    """Plug-ins are typed against narrow protocols (``branching.BranchView``), not the runner: the import graph
    with ``TYPE_CHECKING`` imports and function-level imports counted is still acyclic."""
    graph = {m: imports_of(m, module_level_only=False, type_only=True) for m in MODULES}
    assert find_cycle(graph) is None


def test_registries_are_leaves_and_one_aggregator_imports_the_plugins():
    plugins = imports_of("ticketlab.plugins", module_level_only=True)
    assert {"ticketlab.models.resnet", "ticketlab.vl.tasks", "ticketlab.studies.cv_pretraining",
            "ticketlab.baselines.builtin", "ticketlab.pruning.magnitude"} <= plugins
    for leaf in LEAF_REGISTRIES:
        assert not (imports_of(leaf, module_level_only=False) & plugins), leaf
    importers = {m for m in MODULES if "ticketlab.plugins" in imports_of(m, module_level_only=False)}
    assert importers == {"ticketlab.commands_read"}  # `list`; the package's __init__ loads it lazily by name
    assert {m for m in MODULES if "ticketlab.cli" in imports_of(m, module_level_only=False)} == {"ticketlab.__main__"}


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module is the first ticketlab module imported in its own process (third-party libraries are
    pre-loaded once and the process forked, so the check stays fast)."""
    script = textwrap.dedent("""
        import importlib, os, sys, traceback
        import numpy, torch, yaml, safetensors, tqdm  # noqa: F401  third-party only: no ticketlab module yet
        assert not [m for m in sys.modules if m.startswith("ticketlab")]
        failed = []
        for name in sys.argv[1:]:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            if os.waitpid(pid, 0)[1] != 0:
                failed.append(name)
        print("FAILED:", " ".join(failed))
        sys.exit(1 if failed else 0)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, *MODULES], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip() == "FAILED:"


def test_registry_accepts_the_same_definition_twice_but_not_two_different_objects():
    registry: Registry = Registry("thing")

    def make():  # noqa: ANN202
        def thing() -> int:
            return 1

        return thing

    first, rerun = make(), make()  # a notebook cell run twice: two objects, one definition
    registry.register("a")(first)
    registry.register("a")(first)
    registry.register("a")(rerun)
    assert registry.get("a") is rerun

    def other() -> int:
        return 2

    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(other)
    with pytest.raises(ConfigError, match="unknown thing 'b'; known things: a"):
        registry.get("b")


def test_a_model_and_a_baseline_are_one_new_file_each(tmp_path, monkeypatch):
    """The README's recipe: a new file registers itself; IMP, baselines, reports and `list` pick it up."""
    from tests.conftest import TINY_SCENES
    from ticketlab import cli
    from ticketlab.config import parse_config
    from ticketlab.experiment import run_experiment
    from ticketlab.runfolders import load_run

    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from torch import nn
        from ticketlab.baselines.base import baseline
        from ticketlab.models.base import MODELS, Backbone

        @MODELS.register("readme_mlp")
        def mlp(width: int = 16, random_init: bool = False) -> Backbone:
            net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.ReLU(), nn.Linear(width, width))
            return Backbone(net, width, "transformer")

        @baseline("dense_start", "IMP mask on the dense-trained weights")
        def dense_start(run, k):
            return run.imp_mask(k), run.imp_weights(0)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_plugin")
    cfg = parse_config({"model": {"name": "readme_mlp"}, "task": {"name": "scenes_shape", "options": TINY_SCENES},
                        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "prune": {"rounds": 1, "rewind": "init"},
                        "baselines": ["dense_start"]})
    run = load_run(run_experiment(cfg, tmp_path / "runs", progress=False))
    assert run["rounds"][1]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    assert run["baselines"]["dense_start"][0]["sparsity"] == run["rounds"][1]["sparsity"]
    assert "IMP mask on the dense-trained weights" in (pathlib.Path(run["path"]) / "results.md").read_text()
    assert cli.main(["list", "models"]) == 0
