"""Which weights are prunable: chosen by module type and name patterns, with per-family defaults.

Defaults follow MISSION.md: CNNs prune every convolution except the stem; transformers prune every
linear weight in the encoder and the pooler. Heads, norms, biases and embeddings are never pruned
unless asked (embeddings via ``module_types: [linear, embedding]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from ticketlab.errors import ConfigError

MODULE_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "embedding": (nn.Embedding,),
}
# Transformers: every linear layer of the backbone (attention Q/K/V/O, FFN in/out, pooler) — the
# layer-stack naming differs across transformers versions (``encoder.layer`` vs ``layers``), so the
# default excludes embeddings rather than listing encoder names.
FAMILY_DEFAULTS: dict[str, dict[str, list[str]]] = {
    "cnn": {"module_types": ["conv"], "include": [], "exclude": []},
    "transformer": {"module_types": ["linear"], "include": [], "exclude": [r"(^|[._])embeddings\."]},
    # ConvNeXt-style: convolutions and the blocks' point-wise Linear layers (the stem conv is skipped as for CNNs)
    "hybrid": {"module_types": ["conv", "linear"], "include": [], "exclude": [r"(^|[._])embeddings\."]},
}
HEAD_PREFIX = "head."


@dataclass(frozen=True)
class PrunableConfig:
    """Which weights IMP may prune. Empty lists mean "the model family's default"."""

    module_types: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    prune_stem: bool = False

    def __post_init__(self) -> None:
        for kind in self.module_types:
            if kind not in MODULE_TYPES:
                raise ConfigError(
                    f"unknown prunable module type {kind!r} in prune.prunable.module_types; "
                    f"allowed: {', '.join(MODULE_TYPES)}"
                )
        for pattern in [*self.include, *self.exclude]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"bad regex {pattern!r} in prune.prunable ({exc})") from exc


def prunable_names(model: nn.Module, spec: PrunableConfig | None = None, family: str | None = None) -> list[str]:
    """Names of the prunable weight tensors of ``model``, in module order."""
    spec = spec or PrunableConfig()
    family = family or getattr(model, "family", "cnn")
    if family not in FAMILY_DEFAULTS:
        raise ConfigError(f"unknown model family {family!r}; known: {', '.join(FAMILY_DEFAULTS)}")
    defaults = FAMILY_DEFAULTS[family]
    types = tuple(t for kind in (spec.module_types or defaults["module_types"]) for t in MODULE_TYPES[kind])
    include = [re.compile(p) for p in (spec.include or defaults["include"])]
    exclude = [re.compile(p) for p in [*defaults["exclude"], *spec.exclude]]
    names: list[str] = []
    seen_first_conv = False
    for module_name, module in model.named_modules():
        if not isinstance(module, types) or getattr(module, "weight", None) is None:
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        is_stem = isinstance(module, MODULE_TYPES["conv"]) and not seen_first_conv
        seen_first_conv = seen_first_conv or isinstance(module, MODULE_TYPES["conv"])
        if name.startswith(HEAD_PREFIX) or (is_stem and not spec.prune_stem):
            continue
        if include and not any(p.search(name) for p in include):
            continue
        if any(p.search(name) for p in exclude):
            continue
        names.append(name)
    if not names:
        raise ConfigError(
            f"no prunable weights in {type(model).__name__} for family {family!r} with {spec}; "
            "loosen prune.prunable.include/exclude/module_types"
        )
    return names
