"""``--smoke``: run a real-data preset end to end on CPU in seconds, unchanged but for scale.

Every dataset the config names is replaced by a few samples written in *its own on-disk format* (CIFAR
binary records, SVHN ``.mat``, IDX, an ImageFolder tree, CSV text, V+L JSONL + per-image features), every
checkpoint by a tiny model of the same family in the same key format (torchvision / MoCo v2 / SimCLR for
ResNets by the file's name; a ``save_pretrained`` folder with tokenizer or image processor for Hugging Face
models), and every training recipe by one epoch of small batches with at most two pruning rounds — so the
loaders, key mapping, loading checks and the whole runner are exercised exactly as on the real data.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ticketlab.data.base import SMOKE_WRITERS, TASKS
from ticketlab.models.base import MODELS, build_model

HF_TYPES = {"vit": "vit", "bert": "bert", "hf_resnet": "resnet", "uniter": "bert", "swin": "swin", "hf": None}
TINY_HF = {
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8},
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "resnet": {"hidden_sizes": [8, 16], "depths": [1, 1], "embedding_size": 8},
}
TINY_HF["deit"] = TINY_HF["vit"]
TINY_HF["swin"] = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "image_size": 32,
                   "patch_size": 2}  # a 16x16 grid: each 8 px ticket patch of the tiny ViT is a 4x4 window
TINY_HF["roberta"] = TINY_HF["distilbert"] = TINY_HF["bert"]


def smoke_config(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of config ``data`` with tiny stand-ins (written under ``folder``) for its data and checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    out = copy.deepcopy(data)
    for entry in out.get("pretrainings") or []:  # a CV study's θp from a released checkpoint
        if isinstance(entry, dict) and entry.get("checkpoint"):
            model = entry.get("model") or out.get("model") or {}
            options = {**(model.get("options") or {}), "width": 4}
            entry["checkpoint"] = _resnet_checkpoint(model.get("name", "resnet50"), options,
                                                     Path(entry["checkpoint"]).name, folder)
    _trim_study(out)
    _walk(out, folder, None)
    return out


SMOKE_STUDY_TASKS = 2


def _trim_study(study: dict[str, Any]) -> None:
    """A study's first two target tasks and pre-trainings only (every task's own format is smoked by its find
    preset); the claims and task lists that name a dropped one follow."""
    from ticketlab.config import TaskConfig
    from ticketlab.studies.common import task_key

    def label(entry: dict[str, Any], key: str) -> str:
        return entry.get("label", "") if key == "pretrainings" else \
            task_key(TaskConfig(entry.get("name", ""), entry.get("options") or {}))

    dropped: set[str] = set()
    for key in ("pretrainings", "tasks", "downstream"):
        if isinstance(study.get(key), list) and len(study[key]) > SMOKE_STUDY_TASKS:
            kept = {label(e, key) for e in study[key][:SMOKE_STUDY_TASKS]}
            dropped |= {label(e, key) for e in study[key][SMOKE_STUDY_TASKS:]} - kept
            study[key] = study[key][:SMOKE_STUDY_TASKS]
    if isinstance(study.get("claims"), dict):
        study["claims"] = {k: v for k, v in study["claims"].items() if k not in dropped}
    for names in ("downstream_imp_from", "adversarial_tasks"):
        if isinstance(study.get(names), list):
            study[names] = [n for n in study[names] if n not in dropped]


def _walk(node: Any, folder: Path, key: str | None) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, folder, key)
        return
    if not isinstance(node, dict):
        return
    name = node.get("name")
    if isinstance(name, str) and name in MODELS and key in ("model", "student"):
        _smoke_model(node, folder)
    elif isinstance(name, str) and name in TASKS:
        _smoke_task(node, folder)
    for k, v in list(node.items()):
        if k in ("train", "finetune", "imp_train", "downstream_train") and isinstance(v, dict):
            node[k] = {**v, "epochs": 1, "batch_size": min(int(v.get("batch_size", 8)), 8), "warmup_steps": 0}
        elif k == "prune" and isinstance(v, dict):
            node[k] = {**v, "rounds": min(int(v.get("rounds", 2)), 2)}
        elif k in ("seeds", "keep_rates", "weight_seeds") and isinstance(v, list):
            node[k] = v[:1]
        elif k in ("equal_budget_rates", "baseline_rounds"):
            node[k] = []
        elif k == "analysis_round" and isinstance(v, int):
            node[k] = min(v, 2)
        elif k == "objective_options" and isinstance(v, dict) and "queue_size" in v:
            node[k] = {**v, "queue_size": min(int(v["queue_size"]), 256)}  # MoCo's 65536 keys: not at smoke scale
        elif k in ("transfer_rounds", "adversarial_rounds") and isinstance(v, list):
            node[k] = sorted({min(int(r), 2) for r in v})  # the rounds smoke runs (0, the dense model, stays)
        elif k == "engine":
            node[k] = {**(v or {}), "device": "cpu", "precision": "fp32", "workers": 0, "compile": False,
                       "channels_last": False}  # refused on CPU (a oneDNN hang)
        else:
            _walk(v, folder, k)


# -- data (each file-backed task registers its own writer: SMOKE_WRITERS) ------------------------------
def _smoke_task(node: dict[str, Any], folder: Path) -> None:
    options = dict(node.get("options") or {})
    name = node["name"]
    if name in SMOKE_WRITERS:
        root = folder / "data" / "_".join(str(p) for p in (name, options.get("family")) if p)  # one per V+L family
        root.mkdir(parents=True, exist_ok=True)
        options["path"] = SMOKE_WRITERS.get(name)(options, root)
        if "image_size" in options:
            options["image_size"] = 32
    for key, small in (("n_train", 48), ("n_val", 24), ("n_test", 24)):
        if key in options:
            options[key] = min(int(options[key]), small)
    node["options"] = options


# -- checkpoints -----------------------------------------------------------------------------------------
def _smoke_model(node: dict[str, Any], folder: Path) -> None:
    name, options = node["name"], dict(node.get("options") or {})
    if "width" in options or name.startswith("resnet"):
        options["width"] = 4
    if node.get("checkpoint"):
        node["checkpoint"] = _resnet_checkpoint(name, options, Path(node["checkpoint"]).name, folder)
    if isinstance(options.get("config"), dict) and name in HF_TYPES and name != "uniter":
        options["config"] = TINY_HF[options.get("model_type") or HF_TYPES[name] or "bert"]
    if options.get("path") and name in HF_TYPES:
        options["path"] = _hf_folder(options.get("model_type") or HF_TYPES[name] or "bert", folder)
        options.pop("config", None)
        if name == "uniter":
            options["num_layers"] = min(int(options.get("num_layers", 2)), 2)
            options["image_feature_dim"] = 192
    if name == "uniter" and options.get("checkpoint"):  # a released UNITER file: a tiny one in its key layout
        from ticketlab.vl.uniter_checkpoint import write_tiny_uniter

        options.update(write_tiny_uniter(folder / "checkpoints", Path(options["checkpoint"]).name))
        options["num_layers"] = min(int(options.get("num_layers", 2)), 2)
        if options.get("text_checkpoint"):  # the BERT it started from (mask-on-BERT baseline): same tiny sizes
            options["text_checkpoint"] = _hf_folder("bert", folder)
        if "image_feature_dim" in options:
            options["image_feature_dim"] = 192
    node["options"] = options


def _resnet_checkpoint(name: str, options: dict[str, Any], filename: str, folder: Path) -> str:
    """A tiny ImageNet-layout checkpoint in the key format its file name suggests (moco / simclr / torchvision)."""
    state = build_model(name, 10, {**options, "stem": "imagenet"}).backbone.state_dict()
    width = next(v for k, v in reversed(state.items()) if k.endswith("running_mean")).shape[0]
    lowered = filename.lower()
    if "moco" in lowered:
        state = {f"module.encoder_q.{k}": v for k, v in state.items()} | {
            "module.encoder_q.fc.0.weight": torch.randn(width, width), "module.encoder_q.fc.2.weight":
            torch.randn(128, width), "module.queue": torch.randn(128, 16)}
    elif "simclr" in lowered:
        state = {f"backbone.{k}": v for k, v in state.items()} | {"projector.0.weight": torch.randn(width, width)}
    else:
        state = {**state, "fc.weight": torch.randn(1000, width), "fc.bias": torch.zeros(1000)}
    path = folder / "checkpoints" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    return str(path)


def _hf_folder(model_type: str, folder: Path) -> str:
    """A tiny ``save_pretrained`` folder of ``model_type``, with MiniLM's tokenizer or an image processor."""
    import transformers
    from transformers import AutoConfig, AutoModel

    from ticketlab.models.hf import minilm_path

    transformers.utils.logging.disable_progress_bar()

    target = folder / "checkpoints" / f"tiny-{model_type}"
    if (target / "config.json").is_file():
        return str(target)
    config = AutoConfig.for_model(model_type, **TINY_HF.get(model_type, TINY_HF["bert"]))
    is_text = not hasattr(config, "image_size") and model_type != "resnet"
    if is_text:
        config.vocab_size = 30522  # MiniLM's tokenizer
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(target)
    if is_text:
        for file in Path(minilm_path()).iterdir():
            if file.name.startswith(("tokenizer", "vocab", "special_tokens")):
                shutil.copy(file, target / file.name)
    else:
        (target / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32}}))
    return str(target)
