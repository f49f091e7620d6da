"""Whether a workflow snapshot can still be resumed from: its members' files, checked.

A workflow snapshot is resumable when every member's snapshot file exists with the
size recorded when it was registered (``snapshot_node.snapshot_file_size``; a node
registered before sizes were recorded, or whose file the manager could not see,
is judged by existence only). Restart nodes name no file: an instance that
resumes from one starts afresh. A file that ``snapreg gc`` (or ``manage --keep``)
deleted and recorded is not a fault, but the workflow snapshots that needed it
are no longer resumable, and say so.

Every function here only reads: rows through the caller's session, files through
``os.stat``, each path once per :class:`FileChecker`. :func:`newest_resumable`
falls back as LLNL's SCR does: the newest workflow snapshot that can be resumed
from, and the newer ones it passed over, with the reasons.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from snapreg.storage import queries, schema

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000

ProblemKind = Literal["missing", "size", "deleted"]

#: Problems that :meth:`Resumability.summary` names on its one line.
PROBLEMS_SHOWN = 3


@dataclass(frozen=True)
class Deletion:
    """A recorded deletion of an instance snapshot file (``deleted_snapshot_file``)."""

    deleted_at: datetime
    reason: str


@dataclass(frozen=True)
class MemberFileProblem:
    """Why one member's snapshot file cannot be resumed from.

    Attributes:
        instance: The member's instance.
        path: Its snapshot file, as the instance named it.
        kind: ``missing`` (gone, no deletion recorded), ``size`` (there, but not
            the size recorded at registration) or ``deleted`` (deleted by gc or
            ``manage --keep``, recorded).
        recorded_size: The size recorded at registration, if any.
        actual_size: The size on disk now, if the file is there.
        deletion: The recorded deletion, for ``deleted``.
    """

    instance: str
    path: str
    kind: ProblemKind
    recorded_size: int | None
    actual_size: int | None = None
    deletion: Deletion | None = None

    def describe(self) -> str:
        """One line: ``micro[3]: /x/y.pack is missing``, and so on."""
        where = f"{self.instance}: {self.path}"
        if self.kind == "size":
            return (
                f"{where} is {self.actual_size} bytes, not the {self.recorded_size}"
                " recorded when it was registered"
            )
        if self.kind == "deleted" and self.deletion is not None:
            moment = self.deletion.deleted_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            return f"{where} was deleted on {moment} ({self.deletion.reason})"
        return f"{where} is missing"


@dataclass(frozen=True)
class Resumability:
    """Whether one workflow snapshot can be resumed from, and if not, why."""

    workflow_snapshot_id: int
    problems: tuple[MemberFileProblem, ...]

    @property
    def resumable(self) -> bool:
        """True when every member's file is there with its recorded size."""
        return not self.problems

    def describe(self) -> str:
        """``resumable``, or the problems on one line each."""
        if self.resumable:
            return "resumable"
        return "\n".join(problem.describe() for problem in self.problems)

    def summary(self, shown: int = PROBLEMS_SHOWN) -> str:
        """``resumable``, or the first ``shown`` problems on one line, separated by
        semicolons, and how many more there are."""
        if self.resumable:
            return "resumable"
        words = [problem.describe() for problem in self.problems[:shown]]
        rest = len(self.problems) - len(words)
        if rest:
            words.append(f"and {rest} more member file{'' if rest == 1 else 's'}")
        return "; ".join(words)


class FileChecker:
    """Checks snapshot files against their records, each path stat'ed once."""

    def __init__(self) -> None:
        self._sizes: dict[str, int | None] = {}

    def size(self, path: str) -> int | None:
        """The file's size now; None when it is not there (or not a file)."""
        if path not in self._sizes:
            try:
                status = os.stat(path)
            except (OSError, ValueError):
                self._sizes[path] = None
            else:
                regular = status.st_mode & 0o170000 == 0o100000
                self._sizes[path] = status.st_size if regular else None
        return self._sizes[path]

    def problem(
        self,
        instance: str,
        path: str,
        recorded_size: int | None,
        deletion: Deletion | None,
    ) -> MemberFileProblem | None:
        """What is wrong with one member's file; None when it can be resumed from."""
        actual = self.size(path)
        if actual is None:
            kind: ProblemKind = "deleted" if deletion is not None else "missing"
            return MemberFileProblem(
                instance, path, kind, recorded_size, None, deletion
            )
        if recorded_size is not None and actual != recorded_size:
            return MemberFileProblem(instance, path, "size", recorded_size, actual)
        return None


@dataclass(frozen=True)
class MemberFile:
    """A member's snapshot file as its rows say."""

    workflow_snapshot_id: int
    instance: str
    path: str
    recorded_size: int | None


def member_files(
    session: Session, workflow_snapshot_ids: Sequence[int]
) -> list[MemberFile]:
    """The snapshot files of these workflow snapshots' members (restart nodes name
    none), ordered by workflow snapshot and instance."""
    found: list[MemberFile] = []
    member = schema.WorkflowSnapshotMemberRow
    node = schema.SnapshotNodeRow
    for chunk in queries.chunks(list(workflow_snapshot_ids), _IN_LIST_CHUNK):
        rows = session.execute(
            select(
                member.workflow_snapshot_id,
                node.instance,
                node.snapshot_filename,
                node.snapshot_file_size,
            )
            .join(node, node.id == member.snapshot_node_id)
            .where(
                member.workflow_snapshot_id.in_(chunk),
                node.is_restart.is_(False),
                node.snapshot_filename != "",
            )
            .order_by(member.workflow_snapshot_id, node.instance)
        ).all()
        found.extend(MemberFile(*row) for row in rows)
    return found


def recorded_deletions(
    session: Session, campaign_id: int, paths: Iterable[str]
) -> dict[str, Deletion]:
    """The newest recorded deletion of each of these paths in the campaign."""
    table = schema.DeletedSnapshotFileRow
    deletions: dict[str, Deletion] = {}
    for chunk in queries.chunks(sorted(set(paths)), _IN_LIST_CHUNK):
        rows = session.execute(
            select(table.path, table.deleted_at, table.reason)
            .where(table.campaign_id == campaign_id, table.path.in_(chunk))
            .order_by(table.deleted_at)
        ).all()
        for path, deleted_at, reason in rows:
            deletions[path] = Deletion(deleted_at, reason)
    return deletions


def resumability(
    session: Session,
    campaign_id: int,
    workflow_snapshot_ids: Sequence[int],
    checker: FileChecker | None = None,
) -> dict[int, Resumability]:
    """Whether each of these workflow snapshots of a campaign can be resumed from."""
    checker = checker or FileChecker()
    files = member_files(session, workflow_snapshot_ids)
    missing = [item.path for item in files if checker.size(item.path) is None]
    deletions = recorded_deletions(session, campaign_id, missing) if missing else {}
    problems: dict[int, list[MemberFileProblem]] = {
        snapshot_id: [] for snapshot_id in workflow_snapshot_ids
    }
    for item in files:
        problem = checker.problem(
            item.instance, item.path, item.recorded_size, deletions.get(item.path)
        )
        if problem is not None:
            problems[item.workflow_snapshot_id].append(problem)
    return {
        snapshot_id: Resumability(snapshot_id, tuple(found))
        for snapshot_id, found in problems.items()
    }


#: Workflow snapshots whose files :func:`newest_resumable` checks per query.
FALLBACK_BATCH = 100
#: Skipped workflow snapshots that :meth:`Fallback.skipped_lines` names one by one.
SKIPPED_SHOWN = 20


@dataclass(frozen=True)
class Fallback:
    """The newest resumable workflow snapshot of a campaign, and what was passed over.

    Attributes:
        campaign: The campaign's name.
        chosen: The newest workflow snapshot that can be resumed from; None when
            there is none (or no workflow snapshot at all).
        skipped: The newer ones that cannot be, newest first (every one of the
            campaign's when ``chosen`` is None).
    """

    campaign: str
    chosen: int | None
    skipped: tuple[Resumability, ...]

    def skipped_lines(self, shown: int = SKIPPED_SHOWN) -> list[str]:
        """One line per skipped workflow snapshot, newest first, e.g.
        ``skipped workflow snapshot 9: micro[2]: /x/y.pack is missing``.

        Past ``shown`` of them, one last line counts the rest.
        """
        lines = [
            f"skipped workflow snapshot {item.workflow_snapshot_id}: {item.summary()}"
            for item in self.skipped[:shown]
        ]
        rest = self.skipped[shown:]
        if rest:
            lines.append(
                f"skipped {len(rest)} more workflow snapshot"
                f"{'' if len(rest) == 1 else 's'}, {rest[0].workflow_snapshot_id}"
                f" down to {rest[-1].workflow_snapshot_id}, not resumable either"
                " (snapreg workflows says why)"
            )
        return lines

    def nothing_resumable(self) -> str:
        """That no workflow snapshot of the campaign is resumable, in words."""
        if len(self.skipped) == 1:
            return (
                f"the only workflow snapshot of campaign {self.campaign!r} is not"
                " resumable"
            )
        return (
            f"none of the {len(self.skipped)} workflow snapshots of campaign"
            f" {self.campaign!r} is resumable"
        )


def newest_resumable(
    session: Session,
    campaign_id: int,
    campaign_name: str,
    checker: FileChecker | None = None,
    *,
    batch: int = FALLBACK_BATCH,
) -> Fallback:
    """The campaign's newest workflow snapshot that can be resumed from.

    Checks from the newest down, ``batch`` at a time, and stops at the first that
    is resumable; every file is stat'ed at most once per ``checker``.
    """
    checker = checker or FileChecker()
    snapshot = schema.WorkflowSnapshotRow
    ids = session.scalars(
        select(snapshot.id)
        .join(schema.RunRow, schema.RunRow.id == snapshot.run_id)
        .where(schema.RunRow.campaign_id == campaign_id)
        .order_by(snapshot.id.desc())
    ).all()
    skipped: list[Resumability] = []
    for chunk in queries.chunks(ids, batch):
        found = resumability(session, campaign_id, chunk, checker)
        for snapshot_id in chunk:
            if found[snapshot_id].resumable:
                return Fallback(campaign_name, snapshot_id, tuple(skipped))
            skipped.append(found[snapshot_id])
    return Fallback(campaign_name, None, tuple(skipped))
