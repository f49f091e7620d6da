"""The end-to-end benchmark's quick mode runs and reports sane results.

Results only, never timings: this machine is shared and noisy (the timing goals
live in the benchmark and in docs/performance.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from support import simulation

BENCHMARK = simulation.REPOSITORY / "benchmarks" / "e2e.py"


@pytest.mark.slow  # real MUSCLE3 runs, six of them
def test_quick_mode_for_four_instances_reports_what_the_runs_did(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results.json"
    table = tmp_path / "table.md"
    finished = simulation.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--quick",
            "--only",
            "n=4",
            "--checkpoints",
            "frequent",
            "--no-postgres",
            "--json",
            str(results),
            "--markdown",
            str(table),
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in json.loads(results.read_text()):
        [run] = entry["runs"]  # --quick: one pair
        runs[entry["name"], entry["manager"]] = run
    managers = ("stock muscle_manager", "snapreg SQLite all", "snapreg SQLite latest")
    cases = ("ensemble n=4", "independent n=4")
    assert set(runs) == {(case, manager) for case in cases for manager in managers}
    for run in runs.values():
        assert run["status"] == 0
        assert run["wall"] > 0 and run["cpu"] > 0 and run["peak"] > 0
    for case in cases:
        # the same simulation under every manager: the same registrations, each
        # timed by the instance that made it
        counts = {len(runs[case, manager]["registrations"]) for manager in managers}
        assert len(counts) == 1 and counts.pop() > 0
        for manager in managers[1:]:
            assert not runs[case, manager]["registry_died"]
            assert runs[case, manager]["workflow_snapshots"] >= 1

    # one workflow snapshot per checkpoint: stock keeps up and snapreg's policy
    # "all" writes what it writes
    ensemble = {manager: runs["ensemble n=4", manager] for manager in managers}
    assert not ensemble["stock muscle_manager"]["registry_died"]
    assert (
        ensemble["snapreg SQLite all"]["workflow_snapshots"]
        == ensemble["stock muscle_manager"]["workflow_snapshots"]
    )
    # every combination of the members' snapshots is a workflow snapshot: stock's
    # registry dies on its 100 files a second, snapreg's "all" writes them all
    independent = {manager: runs["independent n=4", manager] for manager in managers}
    assert independent["stock muscle_manager"]["registry_died"]
    assert (
        independent["snapreg SQLite all"]["workflow_snapshots"]
        > independent["stock muscle_manager"]["workflow_snapshots"]
        > independent["snapreg SQLite latest"]["workflow_snapshots"]
    )
    written = table.read_text()
    assert "| independent n=4 | frequent | stock muscle_manager | 1/1 |" in written
    assert "| wall ≤ 1.05 × stock | snapreg SQLite all |" in written
