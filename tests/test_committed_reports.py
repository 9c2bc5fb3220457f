"""Every committed study report with a ``verdicts.json`` re-derives its verdict table from that file alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketlab import cli

RESULTS = Path(__file__).parent.parent / "docs" / "results"
REPORTS = sorted(p.parent for p in RESULTS.glob("*/verdicts.json"))


@pytest.mark.parametrize("folder", REPORTS, ids=lambda p: p.name)
def test_a_committed_report_is_rederived_from_its_verdicts_json(folder, capsys):
    assert cli.main(["verdicts", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "all match the report" in out and out.count("\n") >= 2
