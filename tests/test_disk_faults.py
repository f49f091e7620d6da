"""Full and read-only disks, under the database and under the snapshot folder.

Each disk is a small tmpfs of the test's own (support.disks). What must hold: every
error is one of snapreg's, nothing acknowledged is lost, no temporary file is left,
files that could not be written are reported at once, counted by ``snapreg
campaigns``, raised at the end of the run, and written when there is room again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from snapreg import (
    SnapshotRegistry,
    StorageFullError,
    UnwrittenFilesError,
)
from snapreg.registry.files import TEMPORARY_PREFIX
from snapreg.tools.reader import DatabaseReader
from support.command_line import invoke
from support.disks import small_disk
from support.entries import call_entry
from support.oracle import run_oracle
from support.streams import macro_micro
from support.torture import database_rows

STREAM = macro_micro(5, num_micro=3, num_steps=6)
EXPECTED = run_oracle(STREAM)
EXPECTED_FILES = sum(len(step.workflow_snapshots) for step in EXPECTED)


def _active(registry: SnapshotRegistry) -> dict[str, list[int]]:
    return {
        name: [node.num for node in registry.snapshots(name)]
        for name in EXPECTED[-1].active
    }


def _leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.startswith(".snapreg")]


@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_a_full_database_disk_is_refused_with_snapregs_error_and_loses_nothing(
    tmp_path: Path, entry: str
) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    with small_disk(tmp_path / "disk", "4m") as disk:
        url = f"sqlite:///{disk.path / 'campaign.sqlite'}"
        registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
        third = len(STREAM.registrations) // 3
        for instance, metadata in STREAM.registrations[:third]:
            call_entry(registry, entry, instance, metadata)
        disk.fill()
        refused_at = None
        for index in range(third, len(STREAM.registrations)):
            before = database_rows(url)
            try:
                call_entry(registry, entry, *STREAM.registrations[index])
            except StorageFullError as err:
                assert "the disk is full" in str(err)
                refused_at = index
                break
        assert refused_at is not None, "the registrations never filled the disk"
        # nothing of the refused registration, everything acknowledged before it
        assert database_rows(url) == before
        disk.free()
        for instance, metadata in STREAM.registrations[refused_at:]:
            call_entry(registry, entry, instance, metadata)
        assert _active(registry) == EXPECTED[-1].active
        registry.close()
    assert len(list(folder.glob("snapshot_*.ymmsl"))) == EXPECTED_FILES
    assert _leftovers(folder) == []


def test_a_full_snapshot_folder_is_reported_at_once_counted_and_raised_at_join(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with small_disk(tmp_path / "disk", "256k") as disk:
        folder = disk.path
        registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
        registry.start()
        half = len(STREAM.registrations) // 2
        for instance, metadata in STREAM.registrations[:half]:
            assert registry.register_snapshot(instance, metadata)
        written = len(list(folder.glob("snapshot_*.ymmsl")))
        disk.fill()
        with caplog.at_level(logging.WARNING, logger="snapreg"):
            for instance, metadata in STREAM.registrations[half:]:
                # the registrations themselves are stored: the database has room
                assert registry.register_snapshot(instance, metadata)
        warnings = [
            record.getMessage()
            for record in caplog.records
            if record.getMessage().startswith("Could not write workflow snapshot")
        ]
        unwritten = EXPECTED_FILES - written
        assert unwritten > 0
        assert len(warnings) == unwritten  # one each, as it happens
        assert "No space left on device" in warnings[0]
        assert _leftovers(folder) == []
        shown = json.loads(invoke(capsys, "campaigns", "--db", url, "--json").stdout)
        assert shown[0]["runs"][0]["missing_files"] == unwritten
        table = invoke(capsys, "campaigns", "--db", url)
        assert "Files missing" in table.stdout
        registry.shutdown()
        with pytest.raises(UnwrittenFilesError, match=f"^{unwritten} workflow"):
            registry.join()
        registry.close()  # the run ended at join: nothing more to raise
        with DatabaseReader(url) as reader:
            assert reader.campaigns()[0].runs[0].status == "ended"
        # with room again, the next registry of the run writes them
        disk.free()
        with SnapshotRegistry(STREAM.config, folder, database_url=url):
            pass
        assert len(list(folder.glob("snapshot_*.ymmsl"))) == EXPECTED_FILES
        assert _leftovers(folder) == []
    shown = json.loads(invoke(capsys, "campaigns", "--db", url, "--json").stdout)
    # the tmpfs is gone: every file is missing now, and says so
    assert shown[0]["runs"][0]["missing_files"] == EXPECTED_FILES


def test_files_written_once_there_is_room_before_the_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with small_disk(tmp_path / "disk", "256k") as disk:
        registry = SnapshotRegistry(STREAM.config, disk.path, database_url=url)
        registry.start()
        disk.fill()
        for instance, metadata in STREAM.registrations:
            assert registry.register_snapshot(instance, metadata)
        assert list(disk.path.glob("snapshot_*.ymmsl")) == []
        disk.free()
        registry.shutdown()
        registry.join()  # writes them, raises nothing
        assert len(list(disk.path.glob("snapshot_*.ymmsl"))) == EXPECTED_FILES


def test_a_read_only_folder_when_missing_files_are_rewritten_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with small_disk(tmp_path / "disk", "1m") as disk:
        with SnapshotRegistry(STREAM.config, disk.path, database_url=url) as registry:
            for instance, metadata in STREAM.registrations:
                registry.add_snapshot(instance, metadata)
        lost = sorted(disk.path.glob("snapshot_*.ymmsl"))[:2]
        for path in lost:
            path.unlink()
        disk.read_only()
        before = database_rows(url)
        with caplog.at_level(logging.WARNING, logger="snapreg"):
            reopened = SnapshotRegistry(STREAM.config, disk.path, database_url=url)
        assert sum(
            "Read-only file system" in record.getMessage() for record in caplog.records
        ) == len(lost)
        with pytest.raises(UnwrittenFilesError, match="^2 workflow snapshot file"):
            reopened.close()
        assert _leftovers(disk.path) == []
        assert database_rows(url)["submission"] == before["submission"]
        disk.read_only(False)
        with SnapshotRegistry(STREAM.config, disk.path, database_url=url):
            pass
        assert all(path.exists() for path in lost)
        assert not any(
            path.name.startswith(TEMPORARY_PREFIX) for path in disk.path.iterdir()
        )
