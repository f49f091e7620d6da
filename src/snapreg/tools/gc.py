"""Keep the disk from filling: ``snapreg gc``.

Every snapshot an instance takes is a file (MUSCLE3's ``.pack``), and a long
campaign leaves thousands that no workflow snapshot worth resuming from needs.
:func:`plan_cleanup` works out which can go;
:func:`~snapreg.tools.gc_delete.delete_files` deletes them and records each in the
``deleted_snapshot_file`` table (gc writes that table, never the registry's).

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

What the plan is made from, read in one transaction, is
:mod:`snapreg.tools.gc_read`'s business; which files may go, file by file, and the
unlinking itself, :mod:`snapreg.tools.gc_safety`'s; deleting and recording,
:mod:`snapreg.tools.gc_delete`'s.

A manager that cleans up as its run goes (``snapreg manage --keep``, see
:mod:`snapreg.tools.retention`) plans with a
:class:`~snapreg.tools.gc_read.LiveRun`, which keeps more on top of these rules,
never less: every file of an active node of its own run and of every run that has
a writer (after ``--resume-latest --force`` two managers write, and the newest run
is only one of them), every file its configuration resumes from (its instances
may not have loaded them yet), and every file a member of a workflow snapshot
names whose rows have committed but whose file the registry has not written yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from snapreg.errors import ConfigurationError
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools.gc_read import Facts, LiveRun, SnapshotFileEntry, read
from snapreg.tools.gc_safety import (
    DatabaseFiles,
    RefusalReason,
    Resolver,
    database_files,
    lstat_or_none,
    refusal_of,
    resolved,
    run_directory,
)
from snapreg.tools.reader import campaign_name


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
            lambda session: read(
                session, campaign_name(session, campaign, store.location), keep, live
            )
        )
    return _plan(facts, database_files(database_url))


def _plan(facts: Facts, database: DatabaseFiles) -> CleanupPlan:
    plan = CleanupPlan(
        campaign=facts.campaign,
        campaign_id=facts.campaign_id,
        keep=facts.keep,
        kept_workflow_snapshots=facts.kept_workflow_snapshots,
        kept_files=len(facts.protected),
        live_run=facts.live_run,
    )
    protected_names = {os.path.normpath(name) for name in facts.protected}
    protected_targets = {str(resolved(Path(name))) for name in facts.protected}
    run_dirs = {
        number: run_directory(folder) for number, folder in facts.folders.items()
    }
    going: set[str] = set()
    resolver = Resolver()
    # strings, not paths, up to here: most entries stop at a check below
    for entry in facts.entries:
        status = lstat_or_none(entry.file)
        target = resolver.file_name(entry.file, status)
        if (
            os.path.normpath(entry.file) in protected_names
            or target in protected_targets
        ):
            continue
        if status is None:
            plan.missing.append(entry)
            continue
        refusal = refusal_of(entry.path, run_dirs.get(entry.run), database, resolver)
        if refusal is not None:
            plan.refused.append(RefusedFile(entry, refusal, Path(target)))
            continue
        plan.deletable.append(replace(entry, bytes=status.st_size))
        going.add(entry.file)
    plan.broken_workflow_snapshots = sorted(
        snapshot_id
        for snapshot_id, files in facts.files_of_workflow_snapshots.items()
        if files & going
    )
    return plan
