"""What a gc plan is made from: the campaign's rows, read in one transaction.

:func:`read` gathers what :func:`~snapreg.tools.gc.plan_cleanup` decides on: each
instance snapshot file a node of the campaign names that may still go
(:class:`SnapshotFileEntry`), and the files that are kept whatever is on disk
(those of the newest ``keep`` workflow snapshots, of the newest run's active
nodes, and what a manager's :class:`LiveRun` keeps on top).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from sqlalchemy import exists, func, null, select
from sqlalchemy.orm import Session

from snapreg.storage import queries, schema
from snapreg.storage.locks import held_writer_locks, writer_present

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000
#: Up to this many files, the workflow snapshots that name them are found with
#: the files in the query (one scan of the campaign's nodes); beyond it, every
#: member of the campaign's workflow snapshots is read once instead, as a scan
#: per chunk of files grows with the square of their number (40 s of the
#: dashboard's disk figures on a million files).
_FILES_IN_THE_QUERY = _IN_LIST_CHUNK


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
        file: The file, as the node names it.
        snapshot_node_id: The (first) node that names it.
        run: The number of that node's run.
        instance: Its instance.
        num: Its num.
        bytes: The file's size (of the link itself, for a symbolic link).
    """

    file: str
    snapshot_node_id: int
    run: int
    instance: str
    num: int
    bytes: int = 0

    @cached_property
    def path(self) -> Path:
        """The file as a path; made when asked, as most entries never are."""
        return Path(self.file)


@dataclass
class Facts:
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


def read(session: Session, campaign: str, keep: int, live: LiveRun | None) -> Facts:
    """Read what the plan needs, and no more than what may still go.

    Nodes whose file gc deleted after they registered are left in the database:
    in a long campaign cleaned up as it goes, nearly all of them.
    """
    campaign_row = queries.campaign_row(session, campaign)
    run = schema.RunRow
    node = schema.SnapshotNodeRow
    snapshot = schema.WorkflowSnapshotRow
    runs = session.execute(
        select(
            run.id,
            run.number,
            run.snapshot_folder,
            run.writer_token,
            run.writer_host,
            run.writer_pid,
        )
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
        # another run someone may still write (a manager started beside this
        # one); a run whose writer is known to be gone keeps only what
        # workflow snapshots need
        connection = session.connection()
        held = (
            held_writer_locks(connection)
            if connection.dialect.name == "postgresql"
            else None
        )
        active_runs.update(
            row.id
            for row in runs
            if row.number == live.run
            or (
                row.writer_token is not None
                and writer_present(row.id, row.writer_host, row.writer_pid, held)
                is not False
            )
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
    return Facts(
        campaign=campaign_row.name,
        campaign_id=campaign_row.id,
        keep=keep,
        kept_workflow_snapshots=kept,
        folders={row.number: row.snapshot_folder for row in runs},
        protected=protected,
        entries=entries,
        files_of_workflow_snapshots=_workflow_snapshots_naming(
            session, campaign_row.id, sorted(entry.file for entry in entries)
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
    # a campaign gc never cleaned needs neither the deletions nor the times
    cleaned = session.scalar(select(exists().where(deleted.campaign_id == campaign_id)))
    # a row per node: Core's results, without the ORM's handling of each row
    rows = (
        session.connection()
        .execute(
            select(
                node.id,
                node.run_id,
                node.instance,
                node.num,
                node.snapshot_filename,
                node.registered_at if cleaned else null(),
            )
            .join(run, run.id == node.run_id)
            .where(
                run.campaign_id == campaign_id,
                node.is_restart.is_(False),
                ~exists().where(deleted.snapshot_node_id == node.id),
            )
            .order_by(node.id)
        )
        .all()
    )
    # deletions recorded under another node that names the same file
    last_deleted: dict[str, datetime] = {}
    names = (
        sorted({row.snapshot_filename for row in rows if row.snapshot_filename})
        if cleaned
        else []
    )
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
        # (registered_at is read whenever there are deletions to compare with)
        if (
            gone_at is not None
            and registered_at is not None
            and gone_at >= registered_at
        ):
            continue  # its file went after it registered
        seen.add(filename)
        entries.append(
            SnapshotFileEntry(filename, node_id, run_numbers[run_id], instance, num)
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
    if len(files) > _FILES_IN_THE_QUERY:
        wanted = set(files)
        snapshot = schema.WorkflowSnapshotRow
        for snapshot_id, filename in session.connection().execute(
            select(member.workflow_snapshot_id, node.snapshot_filename)
            .select_from(snapshot)
            .join(run, run.id == snapshot.run_id)
            .join(member, member.workflow_snapshot_id == snapshot.id)
            .join(node, node.id == member.snapshot_node_id)
            .where(run.campaign_id == campaign_id, node.is_restart.is_(False))
        ):
            if filename in wanted:
                found.setdefault(snapshot_id, set()).add(filename)
        return found
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
