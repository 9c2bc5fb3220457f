"""An embedded SQLite results store (default ``<runs-dir>/ticketlab.sqlite``) for listing and comparing runs.

The run folders stay the source of truth; the store is an index rebuilt row by row as rounds finish.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, path TEXT NOT NULL, model TEXT, task TEXT, method TEXT,
    config TEXT NOT NULL, status TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, branch TEXT NOT NULL, round INTEGER NOT NULL, sparsity REAL NOT NULL,
    test_acc REAL, val_acc REAL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, branch, round));
"""


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def upsert_run(self, run_id: str, path: Path, config: dict[str, Any], status: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET "
                "path=excluded.path, status=excluded.status, updated=excluded.updated",
                (run_id, str(path), config["model"]["name"], config["task"]["name"], config["prune"]["method"],
                 json.dumps(config, sort_keys=True), status, time.time()),
            )

    def record(self, run_id: str, branch: str, metrics: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?)",
                (run_id, branch, metrics["round"], metrics["sparsity"], metrics.get("test_acc"),
                 metrics.get("val_acc"), json.dumps(metrics, sort_keys=True)),
            )

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM results x WHERE x.run_id=r.run_id AND x.branch='imp') AS rounds, "
                "(SELECT test_acc FROM results x WHERE x.run_id=r.run_id AND x.branch='imp' AND x.round=0) AS dense, "
                "(SELECT MAX(sparsity) FROM results x WHERE x.run_id=r.run_id AND x.branch='imp') AS max_sparsity "
                "FROM runs r ORDER BY updated"
            ).fetchall()
        return [dict(row) for row in rows]

    def results(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM results WHERE run_id=? ORDER BY branch, round", (run_id,)).fetchall()
        return [dict(row) for row in rows]
