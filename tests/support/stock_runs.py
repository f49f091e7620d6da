"""Real runs of the reaction-diffusion example with the stock muscle_manager, made
once per test session and shared by the tests that only read them.

A fresh run takes about five seconds, so the import and plot tests share these
instead of each making its own. Tests must not change the run directories: copy
one first (:func:`copy_run`) to change it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from . import simulation

_made: dict[str, Path] = {}


def fresh_run(factory: pytest.TempPathFactory) -> Path:
    """A default run of the example, from scratch (6 workflow snapshots)."""
    if "fresh" not in _made:
        base = factory.mktemp("stock_fresh")
        run_dir = base / "run"
        finished = simulation.run(simulation.stock_command(run_dir), cwd=base)
        assert finished.returncode == 0, finished.stderr
        _made["fresh"] = run_dir.resolve()
    return _made["fresh"]


def resumed_run(factory: pytest.TempPathFactory) -> Path:
    """A run resumed from the fresh run's third workflow snapshot.

    Its instances store the snapshots they resume from again and then take new
    ones within milliseconds of each other: the race that makes the manager's
    own result vary from run to run.
    """
    if "resumed" not in _made:
        fresh = fresh_run(factory)
        third = sorted((fresh / "snapshots").glob("snapshot_*.ymmsl"), key=_written)[2]
        base = factory.mktemp("stock_resumed")
        run_dir = base / "run"
        finished = simulation.run(simulation.stock_command(run_dir, third), cwd=base)
        assert finished.returncode == 0, finished.stderr
        _made["resumed"] = run_dir.resolve()
    return _made["resumed"]


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a run directory (file times kept), to change without harm."""
    shutil.copytree(run_dir, destination, symlinks=True)
    return destination


def _written(path: Path) -> tuple[str, int]:
    base, _, counter = path.stem.rpartition("_")
    if base.count("_") == 2 and counter.isdigit():
        return base, int(counter)
    return path.stem, -1
