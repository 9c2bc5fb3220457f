"""The one unit of work (issue 22): cache check, lock, rank-0 write, verify, clean-up — the rules every training
(pre-training, IMP round, baseline, transfer, selector, patch student) now shares."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticketlab import units
from ticketlab.locks import RunLockedError
from ticketlab.paths import training_checkpoint


def make_unit(calls: list[str]):  # noqa: ANN201
    def train(checkpoint: Path) -> dict:
        calls.append("train")
        if checkpoint.parent.is_dir():  # train_model saves mid-round checkpoints on rank 0 only
            checkpoint.write_text("mid-round state")
        return {"score": 0.5}

    def write(tmp: Path, payload: dict) -> None:
        calls.append("write")
        (tmp / "metrics.json").write_text(json.dumps(payload))

    return train, write


def test_a_unit_trains_once_writes_atomically_and_cleans_up(tmp_path):
    calls: list[str] = []
    folder = tmp_path / "rounds" / "round_001"
    train, write = make_unit(calls)
    assert units.run_unit(folder, "metrics.json", train, write, "round 1") == {"score": 0.5}
    assert calls == ["train", "write"]
    assert json.loads((folder / "metrics.json").read_text()) == {"score": 0.5}
    assert (folder / "manifest.json").is_file()  # verified against it right after publishing
    assert sorted(p.name for p in folder.parent.iterdir()) == ["round_001"]  # no checkpoint, no lock left
    assert units.run_unit(folder, "metrics.json", train, write, "round 1") is None  # cached: nothing runs
    assert calls == ["train", "write"]


def test_only_rank_0_writes_a_unit_every_rank_trains_it(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(units, "is_main_process", lambda: False)
    monkeypatch.setattr(units, "wait_for_everyone", lambda: None)
    folder = tmp_path / "transfer" / "round_001"
    train, write = make_unit(calls)
    assert units.run_unit(folder, "metrics.json", train, write, "transfer") == {"score": 0.5}
    assert calls == ["train"] and not folder.exists()


def test_a_unit_in_use_by_another_process_is_a_one_line_error(tmp_path):
    folder = tmp_path / "round_001"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom ticketlab.locks import file_lock\n"
        f"with file_lock(Path({str(units.unit_lock_path(folder))!r}), 'x', remove=True):\n"
        "    print('held', flush=True)\n    time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        train, write = make_unit([])
        with pytest.raises(RunLockedError, match=f"round 1 is in use by process {holder.pid}"):
            units.run_unit(folder, "metrics.json", train, write, "round 1")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    train, write = make_unit([])
    assert units.run_unit(folder, "metrics.json", train, write, "round 1") == {"score": 0.5}  # the lock died with it
    assert not training_checkpoint(folder).exists()


def test_derive_seed_keeps_the_legacy_streams_and_separates_new_ones():
    from ticketlab.seeds import derive_seed

    assert derive_seed(3, "imp_prune", 2) == 3 * 7919 + 2  # the offsets earlier versions used: runs reproduce
    assert derive_seed(3, "random_prune", 2) == 3 * 7919 + 1002
    assert derive_seed(3, "shuffle_theta_p", 2) == 3 * 7919 + 2002
    assert derive_seed(5, "pretraining_init", 2) == 2005 and derive_seed(5, "random_test_patches") == 16
    fresh = {derive_seed(s, p, i) for s in range(3) for p in ("a", "b") for i in range(3)}
    assert len(fresh) == 18 and all(0 <= v < 2**63 for v in fresh)  # a new purpose: its own hashed stream
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)


def test_a_unit_keeps_its_own_log_across_a_failure_and_a_resume(tmp_path):
    from ticketlab.progress import log_line, unit_event

    folder = tmp_path / "rounds" / "round_001"
    attempts: list[int] = []

    def train(checkpoint: Path) -> dict:
        attempts.append(1)
        if len(attempts) == 1:
            checkpoint.write_text("mid-round state")
            unit_event("epoch 1/2: train loss 0.9")
            raise KeyboardInterrupt  # killed mid-round: its log stays beside the folder
        log_line("θp from a checkpoint")
        return {"score": 0.5}

    def write(tmp: Path, payload: dict) -> None:
        (tmp / "metrics.json").write_text(json.dumps(payload))

    with pytest.raises(KeyboardInterrupt):
        units.run_unit(folder, "metrics.json", train, write, "round 1")
    assert units.unit_log_path(folder).is_file() and not folder.exists()
    units.run_unit(folder, "metrics.json", train, write, "round 1")
    lines = (folder / units.UNIT_LOG).read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "round 1: starting", "epoch 1/2: train loss 0.9", "round 1: stopped by KeyboardInterrupt: ",
        "round 1: resuming from its checkpoint", "θp from a checkpoint", "round 1: trained; writing round_001"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["round_001"]  # the log moved inside, nothing left
    unit_event("outside any unit: written nowhere")
    assert len((folder / units.UNIT_LOG).read_text().splitlines()) == 6
