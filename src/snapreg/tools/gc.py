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
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from snapreg.errors import ConfigurationError
from snapreg.storage import queries, schema
from snapreg.storage.engines import (
    create_database_engine,
    is_memory_sqlite,
    normalize_url,
    writer,
)
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.storage.transactions import run_transaction
from snapreg.tools.reader import campaign_name

#: Files unlinked before their rows are recorded in one transaction.
RECORD_BATCH = 200
CONFIGURATION_FILE = "configuration.ymmsl"

RefusalReason = Literal[
    "outside", "not a file", "a database file", "a yMMSL file", "unreadable"
]

# What SQLite keeps beside a database, and how every SQLite database begins.
_DATABASE_SUFFIXES = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"
_YMMSL_SUFFIXES = (".ymmsl", ".yml", ".yaml")


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
    return _plan(facts, _database_files(database_url))


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
    database = _database_files(database_url)
    deleted: list[SnapshotFileEntry] = []
    failed: list[tuple[SnapshotFileEntry, str]] = []
    try:
        run_dirs = _run_directories_by_run(engine, plan.campaign_id)
        entries = plan.deletable
        for start in range(0, len(entries), RECORD_BATCH):
            batch: list[tuple[SnapshotFileEntry, datetime]] = []
            for entry in entries[start : start + RECORD_BATCH]:
                problem = _unlink_if_still_safe(
                    entry, run_dirs.get(entry.run), database
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


def _plan(facts: _Facts, database: _DatabaseFiles) -> CleanupPlan:
    plan = CleanupPlan(
        campaign=facts.campaign,
        campaign_id=facts.campaign_id,
        keep=facts.keep,
        kept_workflow_snapshots=facts.kept_workflow_snapshots,
        kept_files=len(facts.protected),
    )
    protected_names = {os.path.normpath(name) for name in facts.protected}
    protected_targets = {_resolved(Path(name)) for name in facts.protected}
    run_dirs = {
        number: run_directory(folder) for number, folder in facts.folders.items()
    }
    going: set[str] = set()
    for entry in facts.entries:
        if (
            os.path.normpath(entry.path) in protected_names
            or _resolved(entry.path) in protected_targets
        ):
            continue
        if not os.path.lexists(entry.path):
            if str(entry.path) not in facts.already_deleted:
                plan.missing.append(entry)
            continue
        refusal = _refusal(entry.path, run_dirs.get(entry.run), database)
        if refusal is not None:
            plan.refused.append(RefusedFile(entry, refusal, _resolved(entry.path)))
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


# ----------------------------------------------------------- where files may go


def run_directory(snapshot_folder: str | None) -> Path | None:
    """The run directory, resolved, whose instance files a run's gc may delete.

    The parent of the run's workflow snapshot folder when it is a MUSCLE3 run
    directory (it holds ``configuration.ymmsl``); None otherwise, and for a run
    without a recorded folder: then none of its files may be deleted.
    """
    if not snapshot_folder:
        return None
    run_dir = Path(snapshot_folder).parent
    if not (run_dir / CONFIGURATION_FILE).is_file():
        return None
    return _resolved(run_dir)


@dataclass(frozen=True)
class _DatabaseFiles:
    """The SQLite database gc reads, and the files SQLite keeps beside it."""

    paths: frozenset[Path]
    identities: frozenset[tuple[int, int]]  # (device, inode): hard links too

    def __contains__(self, path: Path) -> bool:
        if _resolved(path) in self.paths:
            return True
        try:
            status = os.stat(path)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) in self.identities


def _database_files(database_url: str) -> _DatabaseFiles:
    url = normalize_url(database_url)
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return _DatabaseFiles(frozenset(), frozenset())
    database = _resolved(Path(url.database or ""))
    paths = [database, *(Path(f"{database}{suffix}") for suffix in _DATABASE_SUFFIXES)]
    identities = set()
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            continue
        identities.add((status.st_dev, status.st_ino))
    return _DatabaseFiles(frozenset(paths), frozenset(identities))


def _refusal(
    path: Path, run_dir: Path | None, database: _DatabaseFiles
) -> RefusalReason | None:
    """Why a file may not be deleted, or None if it may."""
    parts = path.parts
    if (
        run_dir is None
        or not path.is_absolute()
        or ".." in parts
        or len(parts) < 5
        or parts[-4] != "instances"
        or parts[-2] != "snapshots"
        # the run directory as the file names it, not one a link leads to,
        # and no link on the way down to the file's folder
        or _resolved(Path(*parts[:-4])) != run_dir
        or _resolved(path.parent) != run_dir.joinpath(*parts[-4:-1])
        or not _is_instance_folder(_resolved(path).parent, run_dir)
    ):
        return "outside"
    if not (path.is_symlink() or path.is_file()):
        return "not a file"
    target = _resolved(path)
    if any(name.endswith(_YMMSL_SUFFIXES) for name in (path.name, target.name)):
        return "a yMMSL file"
    if (
        any(name.endswith(_DATABASE_SUFFIXES) for name in (path.name, target.name))
        or path in database
    ):
        return "a database file"
    if path.is_symlink() and not os.path.exists(path):
        return None  # a dangling link: only the link itself can go
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError:
        return "unreadable"
    if header == _SQLITE_HEADER:
        return "a database file"
    return None


def _is_instance_folder(folder: Path, run_dir: Path) -> bool:
    """Whether a resolved folder is ``run_dir/instances/<instance>/snapshots``."""
    return folder.name == "snapshots" and folder.parent.parent == run_dir / "instances"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


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


def _unlink_if_still_safe(
    entry: SnapshotFileEntry, run_dir: Path | None, database: _DatabaseFiles
) -> str | None:
    """Unlink the file if it is still safe to; otherwise say why not."""
    refusal = _refusal(entry.path, run_dir, database)
    if refusal == "outside":
        return "refused: it now lies outside the run directories"
    if refusal is not None:
        return f"refused: it is now {refusal}"
    assert run_dir is not None  # else refused as outside
    try:
        _unlink_below(run_dir, entry.path.parts[-4:-1], entry.path.name)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            return "refused: a folder on its way is now a symbolic link"
        return str(err)
    return None


def _unlink_below(root: Path, folders: tuple[str, ...], name: str) -> None:
    """Unlink ``root/folders.../name``, following no symbolic link below root.

    Each folder is opened relative to the one before with ``O_NOFOLLOW``: a
    folder replaced by a link since it was checked fails instead of leading
    elsewhere.
    """
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            inner = os.open(
                folder,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                dir_fd=descriptor,
            )
            os.close(descriptor)
            descriptor = inner
        os.unlink(name, dir_fd=descriptor)
    finally:
        os.close(descriptor)


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
