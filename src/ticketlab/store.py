"""An embedded SQLite index (``<runs-dir>/ticketlab.sqlite``) for listing and comparing runs.

The run folders are the source of truth and the index is a cache of them: a corrupt or missing index is
moved aside and rebuilt from the folders, run folders copied in are added when listed, and
``ticketlab ls --reindex`` rebuilds it on demand. A run's status lives in its folder (``status.json``);
``running`` is reported only while a live process holds the run's lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ticketlab.errors import TicketlabError
from ticketlab.fileio import read_json, storage_error, write_json
from ticketlab.locks import is_locked
from ticketlab.paths import IMP, RunPaths, is_run_dir, store_path
from ticketlab.results import read_result
from ticketlab.runfolders import load_run

VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, path TEXT NOT NULL, model TEXT, task TEXT, method TEXT,
    config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, branch TEXT NOT NULL, round INTEGER NOT NULL, sparsity REAL NOT NULL,
    test_acc REAL, val_acc REAL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, branch, round));
"""


def folder_status(run_dir: Path) -> tuple[str, str | None]:
    """(status, error) of a run folder; ``running`` only while its lock is held, else ``interrupted``."""
    paths = RunPaths(run_dir)
    try:
        info = read_json(paths.status) if paths.status.is_file() else {}
    except TicketlabError:
        info = {}
    status = info.get("status") if isinstance(info, dict) else None
    if status is None:  # written before status files existed
        status = "done" if paths.results.is_file() else "interrupted"
    if status == "running" and not is_locked(run_dir):
        status = "interrupted"
    return status, info.get("error") if isinstance(info, dict) else None


class ResultStore:
    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.path = store_path(runs_dir)
        try:
            with self._connect() as db:
                if db.execute("PRAGMA user_version").fetchone()[0] not in (0, VERSION) or not self._fits(db):
                    raise sqlite3.DatabaseError("old schema")
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={VERSION}")
        except sqlite3.DatabaseError as exc:
            if "full" in str(exc) or "readonly" in str(exc):
                raise storage_error(exc, self.path) from exc
            self.reindex()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @staticmethod
    def _fits(db: sqlite3.Connection) -> bool:
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        return not columns or "error" in columns

    def _write(self, sql: str, values: tuple[Any, ...]) -> None:
        try:
            with self._connect() as db:
                db.execute(sql, values)
        except sqlite3.DatabaseError as exc:
            raise storage_error(exc, self.path) from exc

    def reindex(self) -> int:
        """Move the index aside and rebuild it from the run folders; return how many runs it lists."""
        if self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.broken-{int(time.time())}"))
        try:
            with self._connect() as db:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={VERSION}")
        except sqlite3.DatabaseError as exc:
            raise storage_error(exc, self.path) from exc
        return len(self.sync())

    def sync(self) -> list[str]:
        """Add every run folder of the runs folder that the index does not list (e.g. copied in)."""
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT run_id FROM runs")}
        folders = sorted(p for p in self.runs_dir.iterdir() if is_run_dir(p)) if self.runs_dir.is_dir() else []
        return [folder.name for folder in folders if folder.name not in known and self.index_folder(folder)]

    def index_folder(self, folder: Path) -> bool:
        """(Re-)index one run folder from its files: status and every finished round (what a worker wrote)."""
        try:
            run = load_run(folder)
        except TicketlabError:
            return False  # unreadable folders are reported by `ticketlab verify`, not listed
        status, error = folder_status(folder)
        self.upsert_run(folder.name, folder, run["config"], status, error)
        for branch, rows in [(IMP, run["rounds"]), *run["baselines"].items()]:
            for row in rows:
                self.record(folder.name, branch, row["metrics"])
        return True

    def upsert_run(self, run_id: str, path: Path, config: dict[str, Any], status: str, error: str | None = None) -> None:
        self._write(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET "
            "path=excluded.path, status=excluded.status, error=excluded.error, updated=excluded.updated",
            (run_id, str(path), config["model"]["name"], config["task"]["name"], config["prune"]["method"],
             json.dumps(config, sort_keys=True), status, error, time.time()),
        )

    def record(self, run_id: str, branch: str, metrics: dict[str, Any]) -> None:
        self._write(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?)",
            (run_id, branch, metrics["round"], metrics["sparsity"], _score_or_none(metrics, "test"),
             _score_or_none(metrics, "val"), json.dumps(metrics, sort_keys=True)),
        )

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its live status (``running`` only while its lock is held)."""
        self.sync()
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM results x WHERE x.run_id=r.run_id AND x.branch='imp') AS rounds, "
                "(SELECT test_acc FROM results x WHERE x.run_id=r.run_id AND x.branch='imp' AND x.round=0) AS dense, "
                "(SELECT MAX(sparsity) FROM results x WHERE x.run_id=r.run_id AND x.branch='imp') AS max_sparsity "
                "FROM runs r ORDER BY updated"
            ).fetchall()]
        for row in rows:
            if row["status"] == "running" and not is_locked(Path(row["path"])):
                row["status"] = "interrupted"
        return rows

    def results(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM results WHERE run_id=? ORDER BY branch, round", (run_id,)).fetchall()
        return [dict(row) for row in rows]


class NoIndex:
    """The index as a worker process sees it: nothing. Under an executor the driver alone writes the SQLite index
    (from the folders the workers wrote), so concurrent workers never contend for it."""

    def upsert_run(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def set_status(store: ResultStore | NoIndex | None, paths: RunPaths, config: dict[str, Any], status: str,
               error: str | None = None) -> None:
    """Record a run's status in its folder (the source of truth) and in the index (main process only)."""
    if store is None:
        return
    write_json(paths.status, {"status": status, "error": error, "pid": os.getpid(), "time": time.time()})
    store.upsert_run(paths.root.name, paths.root, config, status, error)


def _score_or_none(metrics: dict[str, Any], split: str) -> float | None:
    """The split's score of a record of any version, for the index's columns (None when it has none)."""
    return read_result(metrics).scores.get(split)
