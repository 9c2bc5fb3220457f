"""Typed experiment configs parsed from YAML, and the content hash that names run folders.

Unknown keys and badly-typed values are errors naming the key and what is allowed. The run hash
covers only fields that differ from their defaults, so adding a field with a default later does
not change existing hashes (old runs are never orphaned) — the open_lth rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ticketlab.baselines.base import BASELINES
from ticketlab.data.base import TASKS
from ticketlab.errors import ConfigError
from ticketlab.models.base import MODELS, has_pretrained_weights
from ticketlab.objectives.base import OBJECTIVES
from ticketlab.prunable import PrunableConfig
from ticketlab.pruning.base import PRUNING_METHODS, check_multiple, check_structure
from ticketlab.rewind import REWIND_POINTS
from ticketlab.schedules import round_sparsities
from ticketlab.schema import from_dict, parse_lenient, read_yaml

__all__ = ["ConfigError", "from_dict", "read_yaml"]  # re-exported: the parsing helpers live in ``schema``


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # θp from a file; torchvision/timm/MoCo key names are mapped
    normalize: Any = "auto"  # input mean/std: auto (the checkpoint's image processor), imagenet, none, [[m], [s]]
    allow_missing: list[str] = field(default_factory=list)  # regexes of backbone weights model.checkpoint may lack


@dataclass(frozen=True)
class TaskConfig:
    name: str = "scenes_shape"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe (a pre-training run, or one IMP round / baseline fine-tune)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 2e-4
    epochs: int = 10
    batch_size: int = 128
    lr_schedule: Literal["constant", "step", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training ("step")
    gamma: float = 0.1
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    head_lr_mult: float = 1.0
    divergence_factor: float = 100.0  # stop when a step's loss exceeds this × its first-epoch value; 0 = off
    augment: Literal["none", "cifar", "imagenet", "deit"] = "none"  # batched, seeded, on the training device
    # the DeiT recipe's options (``ticketlab.deit_recipe``): unset = DeiT's value under augment: deit, else off
    randaugment: str | None = field(default=None, repr=False)  # timm string, e.g. rand-m9-mstd0.5-inc1; none = off
    mixup_alpha: float | None = field(default=None, repr=False)  # Beta(α, α) of Mixup; 0 = off
    cutmix_alpha: float | None = field(default=None, repr=False)  # Beta(α, α) of CutMix; 0 = off
    mix_prob: float | None = field(default=None, repr=False)  # probability that a batch is mixed at all
    mix_switch_prob: float | None = field(default=None, repr=False)  # CutMix instead of Mixup when both are on
    label_smoothing: float | None = field(default=None, repr=False)
    random_erasing: float | None = field(default=None, repr=False)  # probability of erasing a box of an image

    def __post_init__(self) -> None:
        _check_ranges(self, "train", positive=("lr", "epochs", "batch_size"),
                      non_negative=("weight_decay", "grad_clip", "warmup_steps", "divergence_factor"))
        if any(getattr(self, name) is not None for name in DEIT_OPTIONS):  # torch-heavy import: only when used
            from ticketlab.deit_recipe import option_problems

            if problems := option_problems(self):
                raise ConfigError.many(problems)


DEIT_OPTIONS = ("randaugment", "mixup_alpha", "cutmix_alpha", "mix_prob", "mix_switch_prob", "label_smoothing",
                "random_erasing")


NOT_HASHED = {"hash": False}  # field metadata: a value that does not change results stays out of the run hash
RESOURCES = ("num_cpus", "num_gpus")  # what one job of an executor asks for (engine.resources)


@dataclass(frozen=True)
class EngineConfig:
    """How training runs (Hugging Face Accelerate underneath). ``precision: auto`` = bf16 on a CUDA device that
    supports it, else fp32. Values that change results are hashed; the device, workers and the checkpoint cadence
    are not (a run may resume on another GPU of the same kind)."""

    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=NOT_HASHED)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    grad_accumulation: int = 1
    channels_last: bool = False
    compile: bool = False
    workers: int = field(default=0, metadata=NOT_HASHED)  # data-loader processes decoding batches in parallel
    tracking: Literal["none", "tensorboard", "mlflow"] = field(default="none", metadata=NOT_HASHED)
    checkpoint_every: int = field(default=200, metadata=NOT_HASHED)  # steps between mid-round checkpoints (+ epoch ends)
    # repr=False on fields added later: a study config hashes its lists of dataclasses by repr, and a new field in
    # that repr would rename every existing study folder (the run hash itself skips default values anyway)
    threads: int = field(default=0, repr=False)  # CPU threads per process; 0 = auto: OMP_NUM_THREADS, else all cores
    resources: dict[str, float] = field(default_factory=dict, metadata=NOT_HASHED, repr=False)  # per executor job
    # the training split held on the device and batched there (same batches, so not hashed)
    data_on_device: bool = field(default=False, metadata=NOT_HASHED, repr=False)

    def __post_init__(self) -> None:
        _check_ranges(self, "engine", positive=("grad_accumulation",),
                      non_negative=("workers", "checkpoint_every", "threads"))
        bad = [f"engine.resources.{k} must be a number >= 0, got {v!r}" if k in RESOURCES else
               f"unknown engine.resources key {k!r}; use num_cpus, num_gpus" for k, v in self.resources.items()
               if k not in RESOURCES or not isinstance(v, int | float) or isinstance(v, bool) or v < 0]
        if bad:
            raise ConfigError.many(bad)


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-train the backbone on a task with an objective; the result is θp."""

    objective: str = "supervised"
    objective_options: dict[str, Any] = field(default_factory=dict)  # e.g. {temperature: 0.5}
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int | None = None  # None: the experiment's seed; fix it to share one θp across seeds of IMP


@dataclass(frozen=True)
class EarlyBirdConfig:
    """Early-bird rounds (You et al., ICLR 2020): every ``every`` optimizer steps the round draws the mask it would
    prune to; it stops once consecutive draws differ in fewer than ``epsilon`` of the prunable weights (normalised
    Hamming distance) for ``window`` draws in a row."""

    epsilon: float = 0.1
    window: int = 3
    every: int = 10

    def __post_init__(self) -> None:
        problems = [f"prune.early_bird.epsilon must lie in (0, 1), got {self.epsilon!r}"] \
            if not 0 < self.epsilon < 1 else []
        problems += [f"prune.early_bird.window must be >= 1, got {self.window!r}"] if self.window < 1 else []
        problems += [f"prune.early_bird.every must be >= 1 step, got {self.every!r}"] if self.every < 1 else []
        if problems:
            raise ConfigError.many(problems)


@dataclass(frozen=True)
class PruneConfig:
    method: str = "global_magnitude"
    schedule: Literal["remaining", "original", "explicit"] = "remaining"
    rate: float = 0.2
    rounds: int = 5
    sparsities: list[float] = field(default_factory=list)  # for schedule "explicit"
    rewind: str = "pretrained"
    rewind_steps: int = 0  # for rewind "early": weights after this many fine-tuning steps
    weights: Literal["final", "best"] = "final"  # prune from the end-of-training weights (LTH) or the best-val ones
    prunable: PrunableConfig = field(default_factory=PrunableConfig)
    # channel_refill | regroup: each round's unstructured mask made structured (repr=False: see EngineConfig.threads)
    structure: str = field(default="none", repr=False)
    channel_multiple: int = field(default=1, repr=False)  # channel tickets keep widths that are multiples of it
    # cheaper IMP (``ticketlab.mask_search``): rounds that stop once their mask is found, fully trained where reported
    early_bird: EarlyBirdConfig | None = field(default=None, repr=False)
    round_budget: float = field(default=1.0, repr=False)  # fraction of a round's steps spent finding the next mask
    report_rounds: Any = field(default="all", repr=False)  # all | last | [k, ...]: rounds trained fully for scores


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    pretrain: PretrainConfig | None = None
    objective: str = "supervised"  # the loss of every IMP round: a downstream task, or a pre-training objective
    objective_options: dict[str, Any] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=lambda: ["omp", "random_prune", "random_reinit"])
    baseline_rounds: list[int] = field(default_factory=list)  # rounds the baselines run at; empty = every round
    seed: int = 0
    deterministic: bool = False
    keep: Literal["needed", "all"] = "needed"  # trained weights kept: θp, round 0 and the last round; or all
    engine: EngineConfig = field(default_factory=EngineConfig)


def _check_ranges(obj: Any, section: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Every field of ``obj`` outside its range, reported together."""
    problems = [f"{section}.{name} must be > 0, got {getattr(obj, name)!r}" for name in positive
                if getattr(obj, name) <= 0]
    problems += [f"{section}.{name} must be >= 0, got {getattr(obj, name)!r}" for name in non_negative
                 if getattr(obj, name) < 0]
    if problems:
        raise ConfigError.many(problems)


# -- parsing (generic, in ``schema``) -------------------------------------------------------------
def load_config(path: str | Path) -> ExperimentConfig:
    return parse_config(read_yaml(path))


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """The typed config, or one ConfigError listing every problem (structure, names, options, ranges) at once."""
    cfg, problems = parse_lenient(ExperimentConfig, data)
    if cfg is not None:
        try:
            validate(cfg)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError.many(problems)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Check names against the registries (leaves, filled by ``ticketlab.plugins``) and values against their
    ranges, before any work starts; every problem is reported at once."""
    problems = MODELS.problems(cfg.model.name, cfg.model.options, "model.options")
    problems += TASKS.problems(cfg.task.name, cfg.task.options, "task.options")
    problems += OBJECTIVES.problems(cfg.objective, cfg.objective_options, "objective_options")
    names = [(PRUNING_METHODS, cfg.prune.method), (REWIND_POINTS, cfg.prune.rewind)]
    for registry, name in names + [(BASELINES, b) for b in cfg.baselines]:
        if name not in registry:
            problems += registry.problems(name, {})
    if cfg.pretrain is not None:
        problems += OBJECTIVES.problems(cfg.pretrain.objective, cfg.pretrain.objective_options,
                                        "pretrain.objective_options")
        problems += TASKS.problems(cfg.pretrain.task.name, cfg.pretrain.task.options, "pretrain.task.options")
        if cfg.model.checkpoint:
            problems.append("give either model.checkpoint or a pretrain section for θp, not both")
    if cfg.prune.structure != "none":
        try:
            check_structure(cfg.prune.method, cfg.prune.structure)
        except ConfigError as exc:
            problems += exc.problems
    if cfg.prune.channel_multiple != 1 and cfg.prune.method in PRUNING_METHODS:
        try:
            check_multiple(cfg.prune.method, cfg.prune.structure, cfg.prune.channel_multiple)
        except ConfigError as exc:
            problems += exc.problems
    if cfg.prune.rewind == "early" and cfg.prune.rewind_steps <= 0:
        problems.append("prune.rewind 'early' needs prune.rewind_steps > 0 (fine-tuning steps before the snapshot)")
    try:
        check_rounds("baseline_rounds", cfg.baseline_rounds, cfg.prune)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError.many(problems)


def check_theta_p_source(cfg: ExperimentConfig) -> None:
    """Rewinding to θp needs a θp: a pre-training stage, a checkpoint or a pre-trained model (checked for new runs,
    so runs written before this rule still open)."""
    if cfg.prune.rewind == "pretrained" and cfg.pretrain is None and not cfg.model.checkpoint \
            and not has_pretrained_weights(cfg.model.name, cfg.model.options):
        raise ConfigError(f"prune.rewind is 'pretrained' but model {cfg.model.name!r} gets no pre-trained weights (no "
                          "pretrain section, model.checkpoint or model.options.path); give one, or set "
                          "prune.rewind: init to rewind to the random initialisation")


def check_rounds(key: str, values: list[int], prune: PruneConfig, low: int = 1) -> None:
    """Round numbers named in a config must exist in the pruning schedule (``low`` = 0 admits the dense round)."""
    rounds = len(round_sparsities(prune.schedule, prune.rounds, prune.rate, prune.sparsities))
    bad = [k for k in values if not low <= k <= rounds]
    if bad:
        raise ConfigError(f"{key} {bad} are outside the rounds {low}..{rounds} of the pruning schedule")


# -- hashing ---------------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def non_default(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass that differ from their defaults (recursively)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("hash", True):
            continue
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value):
            nested = non_default(value)
            if default is None or nested:
                out[f.name] = nested
        elif value != default:
            out[f.name] = value
    return out


def config_hash(obj: Any) -> str:
    blob = json.dumps(non_default(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
