"""Every path of ticketlab's on-disk layout, in one place (open_lth's ``foundations/paths.py``).

Nothing else builds these paths, and this module only names them (reading and checking folders: ``runfolders``).
A runs folder holds::

    ticketlab.sqlite                          the index (a cache of the run folders)
    imp-<hash>/                               an IMP run (``RunPaths``)
        config.json                           the full config: its presence marks the folder
        status.json, .lock                    running / done / failed (+ error) / interrupted; the run lock
        init/theta_p.safetensors              θp (pre-trained backbone + the run's fresh head)
        rounds/round_00k/                     mask.safetensors (+.json), weights.safetensors, metrics.json,
                                              manifest.json (sha256 of every file, written last)
        rounds/round_000/rewind_early.safetensors   the 'early' rewind point (when asked)
        baselines/<name>/round_00k/           mask + metrics of each baseline branch
        transfer/<target>-<key>/round_00k/    metrics.json of a ticket transferred to another task
        results.md, sparsity_accuracy.png     the run's report
    pretrain-<hash>/backbone.safetensors      a pre-training (θp shared by the runs that use it)
    select-<hash>/tickets.safetensors         patch tickets of a selector
    study-<hash>/, vl-study-<hash>/, patchstudy-<hash>/   study folders with report.md
"""

from __future__ import annotations

from pathlib import Path

from ticketlab.errors import TicketlabError

IMP = "imp"  # the branch name of the IMP rounds themselves
STORE_NAME = "ticketlab.sqlite"
RUN_PREFIX = "imp-"
CONFIG = "config.json"
METRICS = "metrics.json"
MASK = "mask.safetensors"
WEIGHTS = "weights.safetensors"  # the best-validation weights (reported, exported)
FINAL_WEIGHTS = "final_weights.safetensors"  # the end-of-training weights IMP prunes from (prune.weights: final)
EARLY = "rewind_early.safetensors"
NEXT_MASK = "next_mask.safetensors"  # the next round's mask, found during a cheaper round (``mask_search``)
PRETRAINED_BACKBONE = "backbone.safetensors"
PRETRAINED_HEADS = "heads.safetensors"  # beside the backbone: the task head (head.*) and objective parts (objective.*)
TICKETS = "tickets.safetensors"
REPORT = "report.md"
HISTORY = "metrics.jsonl"


def round_name(k: int) -> str:
    return f"round_{k:03d}"


def round_of(folder: Path) -> int:
    return int(folder.name.split("_")[1])


class RunPaths:
    """The paths of one IMP run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def theta_p(self) -> Path:
        return self.root / "init" / "theta_p.safetensors"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def results(self) -> Path:
        return self.root / "results.md"

    @property
    def plot(self) -> Path:
        return self.root / "sparsity_accuracy.png"

    def branch_root(self, branch: str) -> Path:
        return self.root / "rounds" if branch == IMP else self.root / "baselines" / branch

    def branch(self, branch: str, k: int) -> Path:
        return self.branch_root(branch) / round_name(k)

    def mask(self, branch: str, k: int) -> Path:
        return self.branch(branch, k) / MASK

    def metrics(self, branch: str, k: int) -> Path:
        return self.branch(branch, k) / METRICS

    def weights(self, k: int) -> Path:
        return self.branch(IMP, k) / WEIGHTS

    def final_weights(self, k: int) -> Path:
        return self.branch(IMP, k) / FINAL_WEIGHTS

    def early(self) -> Path:
        return self.branch(IMP, 0) / EARLY

    def is_done(self, branch: str, k: int) -> bool:
        return self.metrics(branch, k).is_file()

    def finished_rounds(self, branch: str = IMP) -> list[int]:
        base = self.branch_root(branch)
        return sorted(round_of(p) for p in base.glob("round_*") if (p / METRICS).is_file())

    def baseline_names(self) -> list[str]:
        base = self.root / "baselines"
        return sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []

    def transfer(self, target: str, key: str, k: int) -> Path:
        return self.root / "transfer" / f"{target}-{key}" / round_name(k)


def training_checkpoint(result: Path) -> Path:
    """The mid-training checkpoint of a training whose result goes into ``result`` (a folder or a file)."""
    return result.with_name(f".{result.name}.checkpoint.pt")


def run_dir(runs_dir: str | Path, config_hash: str) -> Path:
    return Path(runs_dir) / f"{RUN_PREFIX}{config_hash}"


def pretrain_dir(runs_dir: str | Path, config_hash: str) -> Path:
    return Path(runs_dir) / f"pretrain-{config_hash}"


def select_dir(runs_dir: str | Path, config_hash: str) -> Path:
    return Path(runs_dir) / f"select-{config_hash}"


def study_dir(runs_dir: str | Path, prefix: str, config_hash: str) -> Path:
    return Path(runs_dir) / f"{prefix}-{config_hash}"


def student_dir(study: Path, keep_rate: float, seed: int, variant: str) -> Path:
    return study / f"k_{keep_rate:.2f}" / f"seed_{seed}" / variant


def store_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / STORE_NAME


def is_run_dir(path: str | Path) -> bool:
    """An IMP run folder: it holds ``config.json`` and is named ``imp-*`` or has θp / rounds."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path.name.startswith(RUN_PREFIX) or (path / "init").is_dir()
                                          or (path / "rounds").is_dir())


def resolve_run(ref: str | Path, runs_dir: str | Path | None = None) -> Path:
    """A run folder from a folder path or from the run id that ``ticketlab ls`` prints."""
    path = Path(ref)
    if not is_run_dir(path) and runs_dir is not None and is_run_dir(Path(runs_dir) / str(ref)):
        path = Path(runs_dir) / str(ref)
    if not is_run_dir(path):
        where = f" (looked in {runs_dir})" if runs_dir is not None else ""
        raise TicketlabError(f"no run {str(ref)!r}{where}: give a run folder or a run id listed by 'ticketlab ls'")
    return path


def parse_ref(ref: str, runs_dir: str | Path | None = None) -> tuple[Path, int | None]:
    """``RUN`` or ``RUN:K`` (RUN a folder or a run id) -> (run folder, round or None for every round)."""
    run, sep, k = ref.rpartition(":")
    if not sep:
        run, k = ref, ""
    if k and not k.isdigit():
        raise TicketlabError(f"bad round {k!r} in {ref!r}; use RUN:3 (RUN a folder or a run id)")
    return resolve_run(run, runs_dir), int(k) if k else None
