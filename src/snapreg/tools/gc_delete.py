"""Deleting a gc plan's files and recording each deletion: :func:`delete_files`.

Each file is checked again just before it is unlinked
(:func:`~snapreg.tools.gc_safety.unlink_if_still_safe`), and the deletions are
recorded in the ``deleted_snapshot_file`` table in batches of
:data:`RECORD_BATCH` after (this module writes that table, never the registry's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from snapreg.storage import schema
from snapreg.storage.engines import create_database_engine, writer
from snapreg.storage.transactions import run_transaction
from snapreg.tools.gc import CleanupPlan
from snapreg.tools.gc_read import SnapshotFileEntry
from snapreg.tools.gc_safety import database_files, run_directory, unlink_if_still_safe

#: Files unlinked before their rows are recorded in one transaction.
RECORD_BATCH = 200


@dataclass(frozen=True)
class CleanupResult:
    """What :func:`delete_files` did.

    Attributes:
        deleted: Files deleted and recorded.
        failed: Files that were not deleted, with the reason (e.g. they changed
            since the plan, or the operating system refused).
    """

    deleted: list[SnapshotFileEntry]
    failed: list[tuple[SnapshotFileEntry, str]]

    @property
    def bytes(self) -> int:
        """Bytes freed."""
        return sum(entry.bytes for entry in self.deleted)


def delete_files(
    database_url: str,
    plan: CleanupPlan,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CleanupResult:
    """Delete the plan's deletable files and record each deletion.

    Each file is checked again just before it is unlinked: it must still lie
    inside the run directories and be the plain file (or link) it was.

    Raises:
        StorageUnavailableError: the deletions cannot be recorded.
    """
    engine = create_database_engine(database_url)
    database = database_files(database_url)
    deleted: list[SnapshotFileEntry] = []
    failed: list[tuple[SnapshotFileEntry, str]] = []
    try:
        run_dirs = _run_directories_by_run(engine, plan.campaign_id)
        entries = plan.deletable
        for start in range(0, len(entries), RECORD_BATCH):
            batch: list[tuple[SnapshotFileEntry, datetime]] = []
            for entry in entries[start : start + RECORD_BATCH]:
                problem = unlink_if_still_safe(
                    entry.path, run_dirs.get(entry.run), database
                )
                if problem is None:
                    batch.append((entry, datetime.now(timezone.utc)))
                else:
                    failed.append((entry, problem))
            if batch:
                _record(engine, plan, batch)
                deleted.extend(entry for entry, _ in batch)
            if progress is not None:
                progress(min(start + RECORD_BATCH, len(entries)), len(entries))
    finally:
        engine.dispose()
    return CleanupResult(deleted, failed)


def _run_directories_by_run(engine: Engine, campaign_id: int) -> dict[int, Path | None]:
    rows = run_transaction(
        engine,
        lambda session: session.execute(
            select(schema.RunRow.number, schema.RunRow.snapshot_folder).where(
                schema.RunRow.campaign_id == campaign_id
            )
        ).all(),
    )
    return {number: run_directory(folder) for number, folder in rows}


def _record(
    engine: Engine,
    plan: CleanupPlan,
    batch: list[tuple[SnapshotFileEntry, datetime]],
) -> None:
    rows: list[dict[str, Any]] = [
        {
            "campaign_id": plan.campaign_id,
            "snapshot_node_id": entry.snapshot_node_id,
            "path": str(entry.path),
            "bytes": entry.bytes,
            "deleted_at": deleted_at,
            "reason": plan.reason,
        }
        for entry, deleted_at in batch
    ]
    table: Any = schema.DeletedSnapshotFileRow.__table__
    run_transaction(
        writer(engine), lambda session: session.execute(insert(table), rows)
    )
