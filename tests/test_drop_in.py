"""What MUSCLE3's manager and its users rely on when snapreg stands in for its registry.

MUSCLE3's manager builds ``SnapshotRegistry(config, snapshot_folder,
topology_store)`` with no database URL, calls ``register_snapshot`` from its request
handlers, and ends it with ``shutdown()`` and ``join()`` only. Its tests, and users'
scripts, read every entry of the snapshot folder as a workflow snapshot.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from snapreg import (
    InvalidMetadataError,
    RegistryClosedError,
    SnapshotRegistry,
    UnknownInstanceError,
)
from snapreg.tools.reader import DatabaseReader
from support.oracle import run_oracle
from support.streams import macro_micro
from support.torture import database_rows

pytestmark = pytest.mark.muscle3

STREAM = macro_micro(11, num_micro=3, num_steps=3)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A MUSCLE3-style run directory with its snapshot folder, no database chosen."""
    monkeypatch.delenv("SNAPREG_DATABASE_URL", raising=False)
    (tmp_path / "run" / "snapshots").mkdir(parents=True)
    return tmp_path / "run"


def _register_stream(registry: SnapshotRegistry) -> None:
    for instance, metadata in STREAM.registrations:
        assert registry.register_snapshot(instance, metadata) is True


def _run_status(url: str) -> tuple[str, Any]:
    with DatabaseReader(url) as reader:
        (campaign,) = reader.campaigns()
        (run,) = campaign.runs
        return run.status, run.writer


def test_the_snapshot_folder_holds_workflow_snapshot_files_only(run_dir: Path) -> None:
    folder = run_dir / "snapshots"
    registry = SnapshotRegistry(STREAM.config, folder)
    registry.start()
    _register_stream(registry)
    registry.shutdown()
    registry.join()
    expected = sum(len(step.workflow_snapshots) for step in run_oracle(STREAM))
    entries = sorted(path.name for path in folder.iterdir())
    assert len(entries) == expected > 0
    assert all(
        name.startswith("snapshot_") and name.endswith(".ymmsl") for name in entries
    )
    # the database is beside the folder, in the run directory
    assert (run_dir / "snapreg.sqlite").is_file()
    assert registry.database_url == f"sqlite:///{run_dir.resolve() / 'snapreg.sqlite'}"


def test_the_environment_variable_names_the_database(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several manager starts, each with its own run directory, share one campaign."""
    database = tmp_path / "campaign.sqlite"
    monkeypatch.setenv("SNAPREG_DATABASE_URL", f"sqlite:///{database}")
    half = len(STREAM.registrations) // 2
    with SnapshotRegistry(STREAM.config, run_dir / "snapshots") as first:
        for instance, metadata in STREAM.registrations[:half]:
            first.add_snapshot(instance, metadata)
    second_run = tmp_path / "run2" / "snapshots"
    second_run.mkdir(parents=True)
    with SnapshotRegistry(STREAM.config, second_run, new_run=True) as second:
        assert second.run_number == 2
    assert database.is_file()
    assert not (run_dir / "snapreg.sqlite").exists()
    assert not (tmp_path / "run2" / "snapreg.sqlite").exists()


def test_shutdown_and_join_end_the_run_as_close_does(run_dir: Path) -> None:
    registry = SnapshotRegistry(STREAM.config, run_dir / "snapshots")
    url = f"sqlite:///{run_dir / 'snapreg.sqlite'}"
    registry.start()
    _register_stream(registry)
    assert _run_status(url)[0] == "running"
    registry.shutdown()
    registry.join()
    status, writer = _run_status(url)
    assert status == "ended"
    assert writer is None
    # the write-ahead log is folded back into the database file
    wal = run_dir / "snapreg.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    rows = database_rows(url)
    registry.close()  # a no-op now
    assert database_rows(url) == rows
    assert registry.register_snapshot(*STREAM.registrations[0]) is False
    assert isinstance(registry.refusals[-1].error, RegistryClosedError)
    # the next start continues the same run, which nobody holds any more
    with SnapshotRegistry(STREAM.config, run_dir / "snapshots") as reopened:
        assert reopened.run_number == 1


def test_join_with_a_timeout_before_shutdown_leaves_the_run_open(
    run_dir: Path,
) -> None:
    registry = SnapshotRegistry(STREAM.config, run_dir / "snapshots")
    registry.start()
    registry.join(timeout=0.01)
    url = f"sqlite:///{run_dir / 'snapreg.sqlite'}"
    assert _run_status(url)[0] == "running"
    assert registry.register_snapshot(*STREAM.registrations[0]) is True
    registry.shutdown()
    registry.join()
    assert _run_status(url)[0] == "ended"


def test_a_registry_dropped_without_ending_leaves_the_run_resumable(
    run_dir: Path,
) -> None:
    registry = SnapshotRegistry(STREAM.config, run_dir / "snapshots")
    half = len(STREAM.registrations) // 2
    for instance, metadata in STREAM.registrations[:half]:
        assert registry.register_snapshot(instance, metadata)
    # dropped: no shutdown, join or close; its process is still alive, so the
    # lease is stale only once released or timed out: let it go the way a dead
    # process's would, by forgetting the holder's pid
    url = f"sqlite:///{run_dir / 'snapreg.sqlite'}"
    connection = sqlite3.connect(run_dir / "snapreg.sqlite")
    with connection:
        connection.execute("UPDATE run SET writer_pid = 2147483647")
    connection.close()
    assert _run_status(url)[0] == "interrupted"
    with SnapshotRegistry(STREAM.config, run_dir / "snapshots") as reopened:
        assert reopened.run_number == 1
        for instance, metadata in STREAM.registrations[half:]:
            reopened.add_snapshot(instance, metadata)
        expected = run_oracle(STREAM)[-1].active
        assert {
            name: [node.num for node in reopened.snapshots(name)] for name in expected
        } == expected


@pytest.mark.parametrize(
    ("instance", "bad", "error"),
    [
        ("nobody", STREAM.registrations[0][1], UnknownInstanceError),
        ("macro", {"not": "metadata"}, InvalidMetadataError),
    ],
    ids=["unknown instance", "malformed metadata"],
)
def test_register_snapshot_answers_what_it_refuses_and_the_run_goes_on(
    run_dir: Path,
    caplog: pytest.LogCaptureFixture,
    instance: str,
    bad: Any,
    error: type[Exception],
) -> None:
    url = f"sqlite:///{run_dir / 'snapreg.sqlite'}"
    registry = SnapshotRegistry(STREAM.config, run_dir / "snapshots")
    registry.start()
    half = len(STREAM.registrations) // 2
    for name, good in STREAM.registrations[:half]:
        assert registry.register_snapshot(name, good)
    before = database_rows(url)
    with caplog.at_level(logging.ERROR, logger="snapreg"):
        assert registry.register_snapshot(instance, bad) is False
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(
        f"snapreg did not register the snapshot of {instance} ({error.__name__}: "
    )
    assert record.getMessage().endswith("; the run goes on without it")
    assert record.exc_info is None  # one line: a refusal, not a bug
    assert database_rows(url) == before
    (refusal,) = registry.refusals
    assert refusal.instance == instance
    assert isinstance(refusal.error, error)
    for name, good in STREAM.registrations[half:]:
        assert registry.register_snapshot(name, good)
    registry.shutdown()
    registry.join()
    expected = run_oracle(STREAM)[-1].active
    with SnapshotRegistry(STREAM.config, run_dir / "snapshots") as reopened:
        assert {
            name: [node.num for node in reopened.snapshots(name)] for name in expected
        } == expected
