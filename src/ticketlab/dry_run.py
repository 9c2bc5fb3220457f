"""``--dry-run``: what a long run would trip over in its inputs, and what it will cost — without training.

1. Inputs. The walk ``--smoke`` makes finds every dataset (a node whose name is in ``TASKS``) and every checkpoint
   (model nodes' ``checkpoint``; their ``path`` / ``checkpoint`` / ``config`` / ``tokenizer`` options). A dataset is
   checked by its task factory's ``dry_check(options) -> list[str]`` hook — the reader's own cheap format probe,
   attached beside it with ``data.base.dry_run_hooks`` — after its path is found to exist (a task without a hook:
   only that). A model factory may carry ``dry_check`` too; without one, a ``save_pretrained`` folder needs
   config.json, weights, a tokenizer (text models, unless ``options.tokenizer`` names one) and an image processor
   (image models under ``normalize: auto``), and a checkpoint file must be a safetensors file with a sound header
   or a torch file readable with ``weights_only=True`` (memory-mapped; never unpickled). One line per problem,
   ``dry-run: <key path>: <problem>; <fix>``, all of them, then exit status 2.
2. Cost. The units of work of the job graph the executors run (``Study.jobs``, ``run_jobs.experiment_jobs``), their
   training steps and an estimate of device-hours from a measured step time (``ticketlab.estimate``).
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ticketlab.data.base import TASKS
from ticketlab.errors import ConfigError, TicketlabError, one_line
from ticketlab.estimate import estimate, plan
from ticketlab.jobs import Job
from ticketlab.models.base import MODELS
from ticketlab.tensorfiles import _header_problem, unwrap_state_dict

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model")


def dry_run(data: dict[str, Any], jobs: Callable[[], list[Job]], tiny: bool = False) -> None:
    """Check config ``data``'s inputs, then print its units of work (``jobs()``: the command's job graph) and an
    estimate of device-hours; every problem is printed first, then a TicketlabError (exit status 2)."""
    problems, checked = input_problems(data)
    graph: list[Job] = []
    try:
        graph = jobs()
    except ConfigError as exc:
        problems += [f"dry-run: config: {one_line(p)}" for p in exc.problems]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise TicketlabError(f"dry-run: {len(problems)} problem(s), listed above; fix them and re-run (nothing ran)")
    print(f"dry-run: inputs OK ({', '.join(checked) or 'the config names no data files or checkpoints'})")
    print("\n".join(estimate(plan(graph), *((1, 0) if tiny else (3, 2)))))  # (timed, warm-up) steps; tiny: 1, 0


# -- 1. inputs ------------------------------------------------------------------------------------------------
def input_problems(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(a ``dry-run: <key path>: <problem>; <fix>`` line per missing or malformed input, the key paths checked)."""
    problems: list[str] = []
    checked: list[str] = []
    _walk(data, "", None, problems, checked)
    return problems, checked


def _walk(node: Any, path: str, key: str | None, problems: list[str], checked: list[str]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", key, problems, checked)
        return
    if not isinstance(node, dict):
        return
    name = node.get("name")
    found: list[tuple[str, list[str]]] = []
    if isinstance(name, str) and name in MODELS and key in ("model", "student"):
        found = _model_checks(node, path)
    elif isinstance(name, str) and name in TASKS:
        found = _task_checks(node, path)
    elif key == "pretrainings" and isinstance(node.get("checkpoint"), str):  # a CV study's released θp
        found = [(f"{path}.checkpoint", checkpoint_problems(node["checkpoint"]))]
    checked += [k for k, _ in found]
    problems += [f"dry-run: {k}: {one_line(p)}" for k, lines in found for p in lines]
    for k, v in node.items():
        _walk(v, f"{path}.{k}" if path else str(k), k, problems, checked)


def _hook(hook: Callable[[dict[str, Any]], list[str]], options: dict[str, Any]) -> list[str]:
    try:
        return list(hook(options))
    except TicketlabError as exc:
        return [str(exc)]


def _task_checks(node: dict[str, Any], path: str) -> list[tuple[str, list[str]]]:
    options = node.get("options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("path"), str):
        return []
    if not Path(options["path"]).expanduser().exists():
        return [(f"{path}.options.path", [f"{options['path']} does not exist; put the dataset there or fix the path"])]
    hook = getattr(TASKS.get(node["name"]), "dry_check", None)
    return [(f"{path}.options.path", _hook(hook, options) if hook is not None else [])]


def _model_checks(node: dict[str, Any], path: str) -> list[tuple[str, list[str]]]:
    options = node.get("options") or {}
    found = [(f"{path}.checkpoint", checkpoint_problems(node["checkpoint"]))] if node.get("checkpoint") else []
    hook = getattr(MODELS.get(node["name"]), "dry_check", None)
    if hook is not None:
        return [*found, (f"{path}.options", _hook(hook, options))]
    checks: dict[str, Callable[[str], list[str]]] = {
        "path": lambda v: hf_folder_problems(v, options, node.get("normalize", "auto")),
        "checkpoint": checkpoint_problems, "config": _json_problems, "tokenizer": _tokenizer_problems}
    return found + [(f"{path}.options.{k}", check(options[k])) for k, check in checks.items()
                    if isinstance(options.get(k), str)]


def checkpoint_problems(value: str) -> list[str]:
    """A checkpoint file that exists and holds tensors: a safetensors header that fits the file, or a torch file
    read with ``weights_only=True`` (memory-mapped when zip-format) — never unpickled."""
    file = Path(value).expanduser()
    if not file.is_file():
        return [f"{file} does not exist; download the checkpoint there or fix the path"]
    if file.suffix == ".safetensors":
        problem = _header_problem(file)
        return [f"{file} is not a readable safetensors file ({problem}); download it again"] if problem else []
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except Exception as exc:  # noqa: BLE001  torch raises many types for a bad or unsafe file
        return [f"{file} does not load with weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); "
                "ticketlab never unpickles other objects: re-save it as a state dict of tensors or as safetensors"]
    return [] if unwrap_state_dict(state) is not None else [
        f"{file} does not hold a state dict of tensors (at the top or under state_dict / model / model_state_dict); "
        "save the model's state_dict there"]


def hf_folder_problems(value: str, options: dict[str, Any], normalize: Any = "auto") -> list[str]:
    """A ``save_pretrained`` folder: config.json, a weights file, and the tokenizer / image processor it needs."""
    if value == "minilm":  # shipped by a package
        return []
    folder = Path(value).expanduser()
    if not folder.is_dir():
        return [] if _in_hub_cache(value) else [f"{folder} is not a folder (nor a Hub model in the local cache); save "
                                                "the checkpoint there with save_pretrained or fix the path"]
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{folder}/config.json is missing or unreadable ({type(exc).__name__}); save the model with "
                "save_pretrained"]
    weights = next((folder / w for w in HF_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        problems = [f"{folder} has no weights ({' or '.join(HF_WEIGHTS[:2])}); save the model with save_pretrained"]
    else:
        problems = [] if weights.name.endswith(".index.json") else checkpoint_problems(str(weights))
    text = "vocab_size" in config
    if text and not options.get("tokenizer") and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        problems.append(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer there "
                        "(tokenizer.save_pretrained) or set model.options.tokenizer")
    if not text and "num_channels" in config and normalize == "auto" \
            and not (folder / "preprocessor_config.json").is_file():
        problems.append(f"{folder} has no preprocessor_config.json, so model.normalize auto finds no image mean/std; "
                        "save the image processor there or set model.normalize (e.g. imagenet)")
    return problems


def _in_hub_cache(name: str) -> bool:
    """A Hub model name (``org/name``) whose config the offline cache holds."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id: a local path
        return False


def _json_problems(value: str) -> list[str]:
    try:
        json.loads(Path(value).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{value} is missing or not JSON ({type(exc).__name__}); point it at the model's config file"]
    return []


def _tokenizer_problems(value: str) -> list[str]:
    folder = Path(value).expanduser()
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        return []
    return [f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES[:3])}); save the tokenizer there"]
