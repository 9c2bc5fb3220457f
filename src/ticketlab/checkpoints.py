"""Load pre-trained weights into a backbone, mapping torchvision/timm/MoCo/SimCLR key names.

Keys are matched after stripping wrapper prefixes (``module.``, ``encoder_q.``, ``backbone.`` ...);
classifier heads, projectors, MoCo key encoders and queues are reported as unused. A load that would leave
any backbone weight (a parameter or a BatchNorm running statistic) at its random initialisation — missing,
or present with another shape — is an error naming them, unless ``allow_missing`` patterns cover them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.tensorfiles import load_state_dict

WRAPPER_PREFIXES = ("module.", "encoder_q.", "encoder.", "backbone.", "model.", "base_encoder.")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    shape_mismatch: list[str] = field(default_factory=list)
    parameters_loaded: int = 0
    parameters_total: int = 0

    def summary(self) -> str:
        lines = [f"loaded {self.parameters_loaded} of {self.parameters_total} parameters"]
        for label, keys in (("missing (kept at init)", self.missing), ("unused", self.unused),
                            ("skipped for shape", self.shape_mismatch)):
            if keys:
                lines.append(f"{label}: {len(keys)}: {show_keys(keys, 5)}")
        return "; ".join(lines)


def _candidates(key: str) -> list[str]:
    """The key and every version of it with leading wrapper prefixes stripped."""
    out = [key]
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if out[-1].startswith(prefix):
                out.append(out[-1][len(prefix):])
                changed = True
                break
    return out


def map_state_dict(state: dict[str, torch.Tensor], target: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    wanted = target.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    report = LoadReport()
    for key, tensor in state.items():
        name = next((c for c in _candidates(key) if c in wanted), None)
        if name is None or "encoder_k." in key:
            report.unused.append(key)
        elif tuple(wanted[name].shape) != tuple(tensor.shape):
            report.shape_mismatch.append(f"{key} {tuple(tensor.shape)}->{tuple(wanted[name].shape)}")
        else:
            mapped[name] = tensor
            report.loaded.append(name)
    report.missing = [k for k in wanted if k not in mapped and not k.endswith("num_batches_tracked")]
    params = dict(target.named_parameters())
    report.parameters_total = len(params)
    report.parameters_loaded = sum(1 for k in mapped if k in params)
    return mapped, report


def show_keys(keys: list[str], limit: int = 4) -> str:
    """The first ``limit`` keys of a list, and how many more there are (every load error names keys this way)."""
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone(backbone: nn.Module, path: str | Path, allow_missing: list[str] | tuple[str, ...] = ()) -> LoadReport:
    """Load a checkpoint file into ``backbone`` in place and report what matched; refuse a partial load."""
    mapped, report = map_state_dict(load_state_dict(Path(path)), backbone)
    if report.parameters_loaded == 0 and not report.shape_mismatch:
        raise TicketlabError(
            f"checkpoint {path} shares no parameter names/shapes with {type(backbone).__name__}; "
            "is it for another architecture? (first keys: " + ", ".join(report.unused[:3]) + ")"
        )
    allowed = [re.compile(p) for p in allow_missing]
    left = [k for k in report.missing if not any(p.search(k) for p in allowed)]
    if left:
        mismatched = {m.split(" ")[0] for m in report.shape_mismatch}
        shape = [m for m in report.shape_mismatch if any(c in left for c in _candidates(m.split(" ")[0]))]
        absent = [k for k in left if not any(k in _candidates(m) for m in mismatched)]
        what = "; ".join(f"{label} {len(keys)}: {show_keys(keys)}" for label, keys in
                         (("missing", absent), ("shape mismatch", shape)) if keys)
        raise TicketlabError(f"checkpoint {path} would leave {len(left)} backbone weights of "
                             f"{type(backbone).__name__} at random init ({what}); use a checkpoint of this "
                             "architecture and width, or list them in model.allow_missing (regex)")
    tops = {k.split(".")[0] for k in backbone.state_dict()}
    surplus = [k for k in report.unused if _candidates(k)[-1].split(".")[0] in tops]
    if surplus:  # e.g. ResNet-152 weights given to a ResNet-50: every 50 key fits, the extra blocks would be dropped
        raise TicketlabError(f"checkpoint {path} has {len(surplus)} backbone weights {type(backbone).__name__} has no "
                             f"place for ({show_keys(surplus, 3)}): it is a deeper or wider network of this family; "
                             "use a checkpoint of this architecture (e.g. resnet152 for a ResNet-152 file)")
    backbone.load_state_dict(mapped, strict=False)
    return report
