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
  now, not registered yet), and files under a name gc deleted before that no node
  registered since the deletion names (libmuscle names a file with the first free
  number, so an instance of a run started again in the same run directory may
  write that name anew, and register it a moment later). Nodes whose file gc
  deleted after they registered are not looked at again, so that a pass over a
  long campaign cleaned up as it went reads little more than the files left.

Deletion is checked again file by file just before the file is unlinked, and the
unlink itself walks down from the run directory refusing symbolic links on the
way, so a folder swapped for a link in between deletes nothing elsewhere.
Deletions are recorded in batches after; a crash between the two can leave at
most one batch of deleted files unrecorded.

Which files may go, file by file, and the unlinking itself, are
:mod:`snapreg.tools.gc_safety`'s business.

A manager that cleans up as its run goes (``snapreg manage --keep``, see
:mod:`snapreg.tools.retention`) plans with a :class:`LiveRun`, which keeps more
on top of these rules, never less: every file of an active node of its own run
and of every run that has a writer (after ``--resume-latest --force`` two
managers write, and the newest run is only one of them), every file its
configuration resumes from (its instances may not have loaded them yet), and
every file a member of a workflow snapshot names whose rows have committed but
whose file the registry has not written yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, exists, func, insert, select
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

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000


@dataclass(frozen=True)
class LiveRun:
    """What a manager that cleans up as its run goes still needs beyond gc's rules.

    Attributes:
        run: The number of its run: every file of its active nodes is kept,
            whether or not it is the campaign's newest run, and so are those of
            every other run with a writer (its writer token set).
        resume_files: The instance snapshot files its configuration resumes
            from: kept, as its instances may not have loaded them yet.
        unwritten: Asked once the plan's rows have been read: the workflow
            snapshot files (as their rows record them) that the registry has
            not written yet. Every file a member of those workflow snapshots
            names is kept. Asked after the read, so that a workflow snapshot the
            read saw committed is among them unless its file was written.
    """

    run: int
    resume_files: Collection[str] = ()
    unwritten: Callable[[], Collection[Path]] = frozenset


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
        live_run: The run of the manager that planned it (see
            :class:`LiveRun`), None for ``snapreg gc``.
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
    live_run: int | None = None

    @property
    def reason(self) -> str:
        """What the deletion rows say."""
        if self.live_run is None:
            return (
                f"snapreg gc --keep {self.keep}: needed by none of the newest"
                f" {self.keep} workflow snapshots nor an active node of the newest"
                " run"
            )
        return (
            f"snapreg manage --keep {self.keep} (run {self.live_run}): needed by"
            f" none of the newest {self.keep} workflow snapshots, nor an active"
            " node of the newest run or of a run being written, nor a workflow"
            " snapshot whose file is being written, nor the run's resume files"
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


def plan_cleanup(
    database_url: str,
    campaign: str | None,
    keep: int,
    *,
    live: LiveRun | None = None,
) -> CleanupPlan:
    """Work out which instance snapshot files can go; change nothing.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the only one there is.
        keep: How many of the newest workflow snapshots to keep, at least 1.
        live: What a running manager of the campaign needs kept too.

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
                session, campaign_name(session, campaign, store.location), keep, live
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
    #: the files members of workflow snapshots name, of those that name an entry
    files_of_workflow_snapshots: dict[int, set[str]]
    live_run: int | None


def _read(session: Session, campaign: str, keep: int, live: LiveRun | None) -> _Facts:
    """Read what the plan needs, and no more than what may still go.

    Nodes whose file gc deleted after they registered are left in the database:
    in a long campaign cleaned up as it goes, nearly all of them.
    """
    campaign_row = queries.campaign_row(session, campaign)
    run = schema.RunRow
    node = schema.SnapshotNodeRow
    snapshot = schema.WorkflowSnapshotRow
    runs = session.execute(
        select(run.id, run.number, run.snapshot_folder, run.writer_token)
        .where(run.campaign_id == campaign_row.id)
        .order_by(run.number)
    ).all()
    kept = list(
        session.scalars(
            select(snapshot.id)
            .join(run, run.id == snapshot.run_id)
            .where(run.campaign_id == campaign_row.id)
            .order_by(snapshot.id.desc())
            .limit(keep)
        )
    )
    protected = _files_of(session, kept)
    active_runs = {runs[-1].id} if runs else set()
    if live is not None:
        active_runs.update(
            row.id
            for row in runs
            if row.number == live.run or row.writer_token is not None
        )
    for run_id in active_runs:
        protected.update(
            session.scalars(
                select(node.snapshot_filename).where(
                    node.run_id == run_id,
                    node.retired_at.is_(None),
                    node.is_restart.is_(False),
                )
            )
        )
    entries = _entries(session, campaign_row.id, {row.id: row.number for row in runs})
    if live is not None:
        protected.update(live.resume_files)
        # asked last: see LiveRun.unwritten
        protected |= _files_of(
            session, _unwritten_workflow_snapshots(session, campaign_row.id, live)
        )
    return _Facts(
        campaign=campaign_row.name,
        campaign_id=campaign_row.id,
        keep=keep,
        kept_workflow_snapshots=kept,
        folders={row.number: row.snapshot_folder for row in runs},
        protected=protected,
        entries=entries,
        files_of_workflow_snapshots=_workflow_snapshots_naming(
            session, campaign_row.id, sorted(str(entry.path) for entry in entries)
        ),
        live_run=None if live is None else live.run,
    )


def _entries(
    session: Session, campaign_id: int, run_numbers: dict[int, int]
) -> list[SnapshotFileEntry]:
    """Each file a node of the campaign names, with the first node that names it.

    A node whose file was deleted (by gc, recorded) after the node registered is
    done with: its file is not looked at again. A file that appears again under
    a name gc deleted is someone else's, left alone until a node registered
    after the deletion names it (libmuscle names files with the first free
    number, so a run started again in the same run directory reuses names).
    """
    node = schema.SnapshotNodeRow
    run = schema.RunRow
    deleted = schema.DeletedSnapshotFileRow
    rows = session.execute(
        select(
            node.id,
            node.run_id,
            node.instance,
            node.num,
            node.snapshot_filename,
            node.registered_at,
        )
        .join(run, run.id == node.run_id)
        .where(
            run.campaign_id == campaign_id,
            node.is_restart.is_(False),
            ~exists().where(deleted.snapshot_node_id == node.id),
        )
        .order_by(node.id)
    ).all()
    # deletions recorded under another node that names the same file
    last_deleted: dict[str, datetime] = {}
    names = sorted({row.snapshot_filename for row in rows if row.snapshot_filename})
    for chunk in queries.chunks(names, _IN_LIST_CHUNK):
        for path, latest in session.execute(
            select(deleted.path, func.max(deleted.deleted_at))
            .where(deleted.campaign_id == campaign_id, deleted.path.in_(chunk))
            .group_by(deleted.path)
        ):
            last_deleted[path] = latest
    entries: list[SnapshotFileEntry] = []
    seen: set[str] = set()
    for node_id, run_id, instance, num, filename, registered_at in rows:
        if not filename or filename in seen:
            continue
        gone_at = last_deleted.get(filename)
        if gone_at is not None and gone_at >= registered_at:
            continue  # its file went after it registered
        seen.add(filename)
        entries.append(
            SnapshotFileEntry(
                Path(filename), node_id, run_numbers[run_id], instance, num
            )
        )
    return entries


def _files_of(session: Session, workflow_snapshots: Collection[int]) -> set[str]:
    """The files the members of these workflow snapshots name."""
    node = schema.SnapshotNodeRow
    member = schema.WorkflowSnapshotMemberRow
    files: set[str] = set()
    for chunk in queries.chunks(sorted(workflow_snapshots), _IN_LIST_CHUNK):
        files.update(
            session.scalars(
                select(node.snapshot_filename)
                .join(member, member.snapshot_node_id == node.id)
                .where(
                    member.workflow_snapshot_id.in_(chunk),
                    node.is_restart.is_(False),
                )
            )
        )
    return files


def _unwritten_workflow_snapshots(
    session: Session, campaign_id: int, live: LiveRun
) -> list[int]:
    """The live run's workflow snapshots whose files are not written yet."""
    unwritten = sorted(str(path) for path in live.unwritten())
    snapshot = schema.WorkflowSnapshotRow
    run = schema.RunRow
    found: list[int] = []
    for chunk in queries.chunks(unwritten, _IN_LIST_CHUNK):
        found.extend(
            session.scalars(
                select(snapshot.id)
                .join(run, run.id == snapshot.run_id)
                .where(run.campaign_id == campaign_id, snapshot.path.in_(chunk))
            )
        )
    return found


def _workflow_snapshots_naming(
    session: Session, campaign_id: int, files: list[str]
) -> dict[int, set[str]]:
    """The workflow snapshots a member of which names one of these files."""
    node = schema.SnapshotNodeRow
    member = schema.WorkflowSnapshotMemberRow
    run = schema.RunRow
    found: dict[int, set[str]] = {}
    for chunk in queries.chunks(files, _IN_LIST_CHUNK):
        for snapshot_id, filename in session.execute(
            select(member.workflow_snapshot_id, node.snapshot_filename)
            .join(node, node.id == member.snapshot_node_id)
            .join(run, run.id == node.run_id)
            .where(
                run.campaign_id == campaign_id,
                node.is_restart.is_(False),
                node.snapshot_filename.in_(chunk),
            )
        ):
            found.setdefault(snapshot_id, set()).add(filename)
    return found


def _plan(facts: _Facts, database: DatabaseFiles) -> CleanupPlan:
    plan = CleanupPlan(
        campaign=facts.campaign,
        campaign_id=facts.campaign_id,
        keep=facts.keep,
        kept_workflow_snapshots=facts.kept_workflow_snapshots,
        kept_files=len(facts.protected),
        live_run=facts.live_run,
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
