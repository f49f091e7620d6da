"""What ``snapreg verify`` finds: problems, and restart points lost to gc.

A problem names the rows it is about (run, workflow snapshot, nodes) and the file
where there is one. Workflow snapshots that need a file ``snapreg gc`` deleted and
recorded are not problems: they are kept apart, as ranges of ids, because after a
gc that is most of a long campaign's older workflow snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ProblemKind = Literal[
    "integrity",
    "bad_row",
    "node_order",
    "missing_pair",
    "extra_pair",
    "unexplained_pair",
    "retirement",
    "missing_workflow_snapshot",
    "extra_workflow_snapshot",
    "incomplete_members",
    "inconsistent_members",
    "workflow_file_missing",
    "workflow_file_differs",
    "member_file_missing",
    "member_file_size",
]

#: Every kind of problem, in the order the documentation explains them.
PROBLEM_KINDS: tuple[ProblemKind, ...] = ProblemKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Problem:
    """One thing the rows, the rules or the files disagree on.

    Attributes:
        kind: What kind of problem (see :data:`PROBLEM_KINDS`).
        message: One sentence that names the rows and the file concerned.
        run: The run's number, when the problem belongs to one run.
        workflow_snapshot: The workflow snapshot's id, when it is about one.
        nodes: The snapshot node ids concerned.
        path: The file concerned.
        workflow_snapshots: For a member's file: the workflow snapshots that need it.
    """

    kind: ProblemKind
    message: str
    run: int | None = None
    workflow_snapshot: int | None = None
    nodes: tuple[int, ...] = ()
    path: str | None = None
    workflow_snapshots: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The problem as a JSON object; fields that do not apply are left out."""
        found: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.run is not None:
            found["run"] = self.run
        if self.workflow_snapshot is not None:
            found["workflow_snapshot"] = self.workflow_snapshot
        if self.nodes:
            found["nodes"] = list(self.nodes)
        if self.path is not None:
            found["path"] = self.path
        if self.workflow_snapshots:
            found["workflow_snapshots"] = list(self.workflow_snapshots)
        return found


class Findings:
    """What a check found so far: problems, lost restart points and notes.

    Attributes:
        problems: The problems, in the order they were found.
        notes: What was not checked, and why (e.g. no amcheck on PostgreSQL).
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        # ranges of ids: after a gc, most of a long campaign's workflow snapshots
        # are here, and they come (nearly) in ascending order
        self._not_resumable: list[tuple[int, int]] = []

    def add(self, problem: Problem) -> None:
        """Record a problem."""
        self.problems.append(problem)

    def no_longer_resumable(self, workflow_snapshot_id: int) -> None:
        """Record that a workflow snapshot needs a file gc deleted and recorded."""
        ranges = self._not_resumable
        if ranges:
            first, last = ranges[-1]
            if first <= workflow_snapshot_id <= last + 1:
                ranges[-1] = (first, max(last, workflow_snapshot_id))
                return
        ranges.append((workflow_snapshot_id, workflow_snapshot_id))

    def not_resumable_ranges(self) -> list[tuple[int, int]]:
        """The workflow snapshots that can no longer be resumed from, as ranges.

        Returns:
            ``(first, last)`` ids, inclusive, ascending, not overlapping.
        """
        merged: list[tuple[int, int]] = []
        for first, last in sorted(self._not_resumable):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        return merged


def node_words(instance: str, num: int, node_id: int) -> str:
    """A node as a message names it: ``micro[0] #3 (node 17)``."""
    return f"{instance} #{num} (node {node_id})"
