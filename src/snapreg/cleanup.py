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
* anything that is not inside the run directories the campaign recorded: each
  run's ``snapshot_folder`` and, when that folder's parent is a MUSCLE3 run
  directory (it holds ``configuration.ymmsl``), the instance snapshot folders
  ``instances/<instance>/snapshots`` that really lie inside it. Paths are resolved
  (symbolic links followed) and must lie inside on both counts: the folder the
  entry is in, and what it points to; otherwise the file is refused;
* files no node of the campaign names (for instance one saved by an instance just
  now, not registered yet), and workflow snapshot yMMSL files.

Deletion is checked again file by file just before the file is unlinked, and
recorded in batches after; a crash between the two can leave at most one batch of
deleted files unrecorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from snapreg import models, queries
from snapreg.database import create_database_engine, run_transaction, writer
from snapreg.errors import ConfigurationError
from snapreg.reader import DatabaseReader

#: Files unlinked before their rows are recorded in one transaction.
RECORD_BATCH = 200
CONFIGURATION_FILE = "configuration.ymmsl"

RefusalReason = Literal["outside", "not a file"]


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
        reason: ``outside``: it (or what it links to) is not inside the run
            directories the campaign recorded; ``not a file``: a directory or
            something else that is not a plain file or link.
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
    with DatabaseReader(database_url) as reader:
        name = reader.campaign_name(campaign)
    engine = create_database_engine(database_url, read_only=True)
    try:
        facts = run_transaction(engine, lambda session: _read(session, name, keep))
    finally:
        engine.dispose()
    return _plan(facts)


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
    deleted: list[SnapshotFileEntry] = []
    failed: list[tuple[SnapshotFileEntry, str]] = []
    try:
        roots = _roots_by_run(engine, plan.campaign_id)
        entries = plan.deletable
        for start in range(0, len(entries), RECORD_BATCH):
            batch: list[tuple[SnapshotFileEntry, datetime]] = []
            for entry in entries[start : start + RECORD_BATCH]:
                problem = _unlink_if_still_safe(entry, roots.get(entry.run, []))
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
    run = models.Run
    node = models.SnapshotNode
    snapshot = models.WorkflowSnapshot
    member = models.WorkflowSnapshotMember
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
    deleted = models.DeletedSnapshotFile
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


def _plan(facts: _Facts) -> CleanupPlan:
    plan = CleanupPlan(
        campaign=facts.campaign,
        campaign_id=facts.campaign_id,
        keep=facts.keep,
        kept_workflow_snapshots=facts.kept_workflow_snapshots,
        kept_files=len(facts.protected),
    )
    protected_names = {os.path.normpath(name) for name in facts.protected}
    protected_targets = {_resolved(Path(name)) for name in facts.protected}
    roots = {number: run_roots(folder) for number, folder in facts.folders.items()}
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
        refusal = _refusal(entry.path, roots.get(entry.run, []))
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


def run_roots(snapshot_folder: str | None) -> list[Path]:
    """The folders, resolved, inside which a run's instance files may be deleted.

    The run's workflow snapshot folder, and, when its parent is a MUSCLE3 run
    directory (it holds ``configuration.ymmsl``), every
    ``instances/<instance>/snapshots`` folder of it that resolves to a place
    inside that run directory. A run without a recorded folder has none.
    """
    if not snapshot_folder:
        return []
    folder = Path(snapshot_folder)
    roots = [_resolved(folder)]
    run_dir = folder.parent
    if not (run_dir / CONFIGURATION_FILE).is_file():
        return roots
    inside = _resolved(run_dir)
    instances = run_dir / "instances"
    if instances.is_dir():
        for instance_dir in sorted(instances.iterdir()):
            snapshots = instance_dir / "snapshots"
            if snapshots.is_dir():
                resolved = _resolved(snapshots)
                if _is_inside(resolved, [inside]):
                    roots.append(resolved)
    return roots


def _refusal(path: Path, roots: Sequence[Path]) -> RefusalReason | None:
    """Why a file may not be deleted, or None if it may."""
    if not path.is_absolute():
        return "outside"
    folder = _resolved(path.parent)
    target = _resolved(path)
    if not (_is_inside(folder, roots) and _is_inside(target, roots)):
        return "outside"
    if not (path.is_symlink() or path.is_file()):
        return "not a file"
    return None


def _is_inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


# ------------------------------------------------------------------ deleting


def _roots_by_run(engine: Engine, campaign_id: int) -> dict[int, list[Path]]:
    rows = run_transaction(
        engine,
        lambda session: session.execute(
            select(models.Run.number, models.Run.snapshot_folder).where(
                models.Run.campaign_id == campaign_id
            )
        ).all(),
    )
    return {number: run_roots(folder) for number, folder in rows}


def _unlink_if_still_safe(entry: SnapshotFileEntry, roots: list[Path]) -> str | None:
    """Unlink the file if it is still safe to; otherwise say why not."""
    refusal = _refusal(entry.path, roots)
    if refusal == "outside":
        return "refused: it now lies outside the run directories"
    if refusal is not None:
        return f"refused: it is now {refusal}"
    try:
        os.unlink(entry.path)
    except OSError as err:
        return str(err)
    return None


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
    table: Any = models.DeletedSnapshotFile.__table__
    run_transaction(
        writer(engine), lambda session: session.execute(insert(table), rows)
    )
