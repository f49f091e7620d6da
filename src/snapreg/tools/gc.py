"""Keep the disk from filling: ``snapreg gc``.

Every snapshot an instance takes is a file (MUSCLE3's ``.pack``), and a long
campaign leaves thousands that no workflow snapshot worth resuming from needs.
:func:`plan_cleanup` works out which can go; :func:`delete_files` deletes them and
records each in the ``deleted_snapshot_file`` table (this module writes that table,
never the registry's).

What is never touched:

* every file a member of the campaign's newest ``keep`` workflow snapshots names;
* every file of an active node of the campaign's newest run: that run may still be
  continued, and its active nodes may join a future workflow snapshot;
* anything but an instance snapshot file inside a run directory the campaign
  recorded. A run's directory is its workflow snapshot folder's parent when that
  is a MUSCLE3 run directory (it holds ``configuration.ymmsl``); a file may go
  only when its name is ``<dir>/instances/<instance>/snapshots/<file>`` with
  ``<dir>`` that very run directory, no symbolic link on the way from there to
  the file, and, when the file is itself a link, what it points to in an
  instance snapshot folder of the run directory too (it is the link that goes,
  never what it points to). The
  workflow snapshot folder itself is never a place to delete from: it holds the
  workflow snapshot files (and, by default, the registry's database);
* a database: the one gc reads (with its ``-wal``, ``-shm`` and ``-journal``
  files) wherever it is, any SQLite file, and any file named like those;
* yMMSL files (``.ymmsl``, ``.yml``, ``.yaml``);
* files no node of the campaign names (for instance one saved by an instance just
  now, not registered yet).

Deletion is checked again file by file just before the file is unlinked, and the
unlink itself walks down from the run directory refusing symbolic links on the
way, so a folder swapped for a link in between deletes nothing elsewhere.
Deletions are recorded in batches after; a crash between the two can leave at
most one batch of deleted files unrecorded.

Which files may go, file by file, and the unlinking itself, are
:mod:`snapreg.tools.gc_safety`'s business.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from snapreg.errors import ConfigurationError
from snapreg.storage import queries, schema
from snapreg.storage.engines import create_database_engine, writer
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.storage.transactions import run_transaction
from snapreg.tools.gc_safety import (
    DatabaseFiles,
    RefusalReason,
    database_files,
    refusal_of,
    resolved,
    run_directory,
    unlink_if_still_safe,
)
from snapreg.tools.reader import campaign_name

#: Files unlinked before their rows are recorded in one transaction.
RECORD_BATCH = 200


@dataclass(frozen=True)
class SnapshotFileEntry:
    """An instance snapshot file that a node of the campaign names.

    Attributes:
        path: The file, as the node names it.
        snapshot_node_id: The (first) node that names it.
        run: The number of that node's run.
        instance: Its instance.
        num: Its num.
        bytes: The file's size (of the link itself, for a symbolic link).
    """

    path: Path
    snapshot_node_id: int
    run: int
    instance: str
    num: int
    bytes: int = 0


@dataclass(frozen=True)
class RefusedFile:
    """A file that could go but is not deleted, and why.

    Attributes:
        entry: The file.
        reason: ``outside``: it (or the folder it is in, or what it links
            to) is not in an instance snapshot folder of the run directory
            its run recorded; ``not a file``: a directory or something else
            that is not a plain file or link; ``a database file``: a SQLite
            database (the one gc reads, or any other) or its journal;
            ``a yMMSL file``: a workflow snapshot or configuration file;
            ``unreadable``: it cannot be read to tell.
        resolved: Where it resolves to.
    """

    entry: SnapshotFileEntry
    reason: RefusalReason
    resolved: Path


@dataclass
class CleanupPlan:
    """What ``snapreg gc`` would delete, keep and refuse.

    Attributes:
        campaign: The campaign.
        keep: How many of the newest workflow snapshots are kept.
        kept_workflow_snapshots: Their ids, newest first.
        kept_files: Files kept for them and for the newest run's active nodes.
        deletable: Files no kept workflow snapshot or active node needs.
        refused: Files that could go but lie outside the run directories.
        missing: Files that could go but are already gone (and were not deleted
            by snapreg gc).
        broken_workflow_snapshots: Older workflow snapshots that name a file in
            ``deletable``: they can no longer be resumed from once it is gone.
        reason: What each deletion row will say.
    """

    campaign: str
    campaign_id: int
    keep: int
    kept_workflow_snapshots: list[int]
    kept_files: int
    deletable: list[SnapshotFileEntry] = field(default_factory=list)
    refused: list[RefusedFile] = field(default_factory=list)
    missing: list[SnapshotFileEntry] = field(default_factory=list)
    broken_workflow_snapshots: list[int] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """What the deletion rows say."""
        return (
            f"snapreg gc --keep {self.keep}: needed by none of the newest"
            f" {self.keep} workflow snapshots nor an active node of the newest run"
        )

    @property
    def bytes(self) -> int:
        """Bytes the deletable files take."""
        return sum(entry.bytes for entry in self.deletable)


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


def plan_cleanup(database_url: str, campaign: str | None, keep: int) -> CleanupPlan:
    """Work out which instance snapshot files can go; change nothing.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the only one there is.
        keep: How many of the newest workflow snapshots to keep, at least 1.

    Raises:
        ConfigurationError: ``keep`` below 1.
        NotFoundError: no such database or campaign.
        SchemaVersionError: the schema does not match this snapreg.
    """
    if keep < 1:
        raise ConfigurationError("--keep must be at least 1")
    with ReadOnlyStore(database_url, check_schema=True) as store:
        facts = store.read(
            lambda session: _read(
                session, campaign_name(session, campaign, store.location), keep
            )
        )
    return _plan(facts, database_files(database_url))


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


# ------------------------------------------------------------------ reading


@dataclass
class _Facts:
    """What the plan is made from, read in one transaction."""

    campaign: str
    campaign_id: int
    keep: int
    kept_workflow_snapshots: list[int]
    folders: dict[int, str | None]  # run number: snapshot folder
    protected: set[str]
    entries: list[SnapshotFileEntry]
    already_deleted: set[str]
    files_of_workflow_snapshots: dict[int, set[str]]


def _read(session: Session, campaign: str, keep: int) -> _Facts:
    campaign_row = queries.campaign_row(session, campaign)
    run = schema.RunRow
    node = schema.SnapshotNodeRow
    snapshot = schema.WorkflowSnapshotRow
    member = schema.WorkflowSnapshotMemberRow
    runs = session.execute(
        select(run.id, run.number, run.snapshot_folder)
        .where(run.campaign_id == campaign_row.id)
        .order_by(run.number)
    ).all()
    run_numbers = {row.id: row.number for row in runs}
    kept = list(
        session.scalars(
            select(snapshot.id)
            .join(run, run.id == snapshot.run_id)
            .where(run.campaign_id == campaign_row.id)
            .order_by(snapshot.id.desc())
            .limit(keep)
        )
    )
    files_of_workflow_snapshots: dict[int, set[str]] = {}
    for snapshot_id, filename in session.execute(
        select(member.workflow_snapshot_id, node.snapshot_filename)
        .join(node, node.id == member.snapshot_node_id)
        .join(run, run.id == node.run_id)
        .where(run.campaign_id == campaign_row.id, node.is_restart.is_(False))
    ):
        files_of_workflow_snapshots.setdefault(snapshot_id, set()).add(filename)
    protected: set[str] = set()
    for snapshot_id in kept:
        protected |= files_of_workflow_snapshots.get(snapshot_id, set())
    if runs:
        protected.update(
            session.scalars(
                select(node.snapshot_filename).where(
                    node.run_id == runs[-1].id,
                    node.retired_at.is_(None),
                    node.is_restart.is_(False),
                )
            )
        )
    entries: list[SnapshotFileEntry] = []
    seen: set[str] = set()
    for node_id, run_id, instance, num, filename in session.execute(
        select(node.id, node.run_id, node.instance, node.num, node.snapshot_filename)
        .join(run, run.id == node.run_id)
        .where(run.campaign_id == campaign_row.id, node.is_restart.is_(False))
        .order_by(node.id)
    ):
        if not filename or filename in seen:
            continue
        seen.add(filename)
        entries.append(
            SnapshotFileEntry(
                Path(filename), node_id, run_numbers[run_id], instance, num
            )
        )
    deleted = schema.DeletedSnapshotFileRow
    already_deleted = set(
        session.scalars(
            select(deleted.path).where(deleted.campaign_id == campaign_row.id)
        )
    )
    return _Facts(
        campaign=campaign_row.name,
        campaign_id=campaign_row.id,
        keep=keep,
        kept_workflow_snapshots=kept,
        folders={row.number: row.snapshot_folder for row in runs},
        protected=protected,
        entries=entries,
        already_deleted=already_deleted,
        files_of_workflow_snapshots=files_of_workflow_snapshots,
    )


def _plan(facts: _Facts, database: DatabaseFiles) -> CleanupPlan:
    plan = CleanupPlan(
        campaign=facts.campaign,
        campaign_id=facts.campaign_id,
        keep=facts.keep,
        kept_workflow_snapshots=facts.kept_workflow_snapshots,
        kept_files=len(facts.protected),
    )
    protected_names = {os.path.normpath(name) for name in facts.protected}
    protected_targets = {resolved(Path(name)) for name in facts.protected}
    run_dirs = {
        number: run_directory(folder) for number, folder in facts.folders.items()
    }
    going: set[str] = set()
    for entry in facts.entries:
        if (
            os.path.normpath(entry.path) in protected_names
            or resolved(entry.path) in protected_targets
        ):
            continue
        if not os.path.lexists(entry.path):
            if str(entry.path) not in facts.already_deleted:
                plan.missing.append(entry)
            continue
        refusal = refusal_of(entry.path, run_dirs.get(entry.run), database)
        if refusal is not None:
            plan.refused.append(RefusedFile(entry, refusal, resolved(entry.path)))
            continue
        size = entry.path.lstat().st_size
        plan.deletable.append(
            SnapshotFileEntry(
                entry.path,
                entry.snapshot_node_id,
                entry.run,
                entry.instance,
                entry.num,
                size,
            )
        )
        going.add(str(entry.path))
    plan.broken_workflow_snapshots = sorted(
        snapshot_id
        for snapshot_id, files in facts.files_of_workflow_snapshots.items()
        if files & going
    )
    return plan


# ------------------------------------------------------------------ deleting


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
