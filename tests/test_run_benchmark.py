"""The scenario benchmark measures what it says (results only, never timings)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from run import floor  # noqa: E402


def test_the_floor_is_measured_on_a_file_set_up_as_the_registry_sets_up_its_own(
    tmp_path: Path,
) -> None:
    # A registry's SQLite file is in WAL mode; a floor measured in the default
    # rollback journal pays three syncs a commit and is five times higher.
    path = tmp_path / "floor.sqlite"
    assert floor(f"sqlite:///{path}", count=3) > 0
    with sqlite3.connect(path) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
