"""``snapreg verify``'s file checks: workflow snapshot files and members' files.

A workflow snapshot file must be there and say what its rows say: the text the
registry writes for those rows (:func:`~snapreg.rules.workflow_file.render`), or
failing that, yMMSL whose ``resume`` mapping is the rows' and whose description
names the run's model. A member's snapshot file must be there with the size
recorded when it was registered, which
:class:`~snapreg.tools.restart_points.FileChecker` judges; one that ``snapreg gc``
deleted and recorded is no problem, but the workflow snapshots that need it can no
longer be resumed from, and are listed as such.

Memory stays bounded: the checker forgets the paths it has seen every
:data:`REMEMBERED_PATHS` members (a path seen again is ``stat``-ed again), and
missing files are looked up in ``deleted_snapshot_file`` in batches.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ymmsl
from sqlalchemy.orm import Session

from snapreg.rules.workflow_file import Member, render, resume_mapping
from snapreg.storage.codecs import metadata_from_row
from snapreg.tools.restart_points import (
    Deletion,
    FileChecker,
    MemberFileProblem,
    recorded_deletions,
)
from snapreg.tools.verify_findings import Findings, Problem, ProblemKind, node_words
from snapreg.tools.verify_rows import RunInfo, StoredWorkflowSnapshot

#: A workflow snapshot file larger than this is not read: it is not one.
MAX_WORKFLOW_FILE = 16 * 2**20
#: Members' files checked before the checker forgets the paths it has seen.
REMEMBERED_PATHS = 4096
#: Missing members' files looked up in deleted_snapshot_file at a time.
DELETION_BATCH = 1000
#: Workflow snapshot ids a problem's message names; ``workflow_snapshots`` has all.
NAMED_IN_MESSAGE = 10
#: The path of a workflow snapshot of a run without a folder (no file is written).
NO_FILE_PREFIX = "(no file)"

_MODEL_NAMED = re.compile(r"Workflow snapshot for (.*) taken on ")


@dataclass
class _BadFile:
    """A member's file with a problem, and the workflow snapshots that need it."""

    problem: MemberFileProblem
    run: int
    node: str
    node_id: int
    needed_by: list[int] = field(default_factory=list)


class FileChecks:
    """Checks the files of stored workflow snapshots, one at a time.

    Attributes:
        workflow_files: Workflow snapshot files checked.
        member_files: Members' files checked (a file needed by several workflow
            snapshots counts once for each).
    """

    def __init__(self, session: Session, campaign_id: int, findings: Findings) -> None:
        self._session = session
        self._campaign_id = campaign_id
        self._findings = findings
        self._checker = FileChecker()
        self._deleted: dict[str, Deletion] = {}
        self._since_reset = 0
        # missing files not yet looked up: (run number, workflow snapshot id, row)
        self._deferred: list[tuple[int, int, Any]] = []
        self._bad: dict[str, _BadFile] = {}
        self.workflow_files = 0
        self.member_files = 0

    def check(self, run: RunInfo, snapshot: StoredWorkflowSnapshot) -> None:
        """Check a workflow snapshot's file and its members' files."""
        self._workflow_file(run, snapshot)
        for row in snapshot.members:
            if row.id is not None and not row.is_restart and row.snapshot_filename:
                self._member_file(run.number, snapshot.id, row)

    def finish(self) -> None:
        """Report the members' files with problems, once each."""
        self._resolve()
        for path, bad in self._bad.items():
            kind: ProblemKind = (
                "member_file_size"
                if bad.problem.kind == "size"
                else "member_file_missing"
            )
            needed = bad.needed_by
            named = ", ".join(str(item) for item in needed[:NAMED_IN_MESSAGE])
            if len(needed) > NAMED_IN_MESSAGE:
                named += f" and {len(needed) - NAMED_IN_MESSAGE} more"
            self._findings.add(
                Problem(
                    kind,
                    f"run {bad.run}: {bad.node}'s file {bad.problem.describe()};"
                    f" workflow snapshot{'s' if len(needed) > 1 else ''} {named}"
                    f" need{'' if len(needed) > 1 else 's'} it",
                    run=bad.run,
                    nodes=(bad.node_id,),
                    path=path,
                    workflow_snapshots=tuple(needed),
                )
            )
        self._bad.clear()

    # ------------------------------------------------------------ members' files

    def _member_file(self, run_number: int, snapshot_id: int, row: Any) -> None:
        self.member_files += 1
        path = row.snapshot_filename
        bad = self._bad.get(path)
        if bad is not None:
            bad.needed_by.append(snapshot_id)
            return
        if path in self._deleted:
            self._findings.no_longer_resumable(snapshot_id)
            return
        self._since_reset += 1
        if self._since_reset > REMEMBERED_PATHS:
            self._resolve()
            self._checker = FileChecker()
            self._deleted.clear()
            self._since_reset = 0
        problem = self._checker.problem(
            row.instance, path, row.snapshot_file_size, None
        )
        if problem is None:
            return
        if problem.kind == "missing":
            self._deferred.append((run_number, snapshot_id, row))
            if len(self._deferred) >= DELETION_BATCH:
                self._resolve()
        else:
            self._note_bad(problem, run_number, snapshot_id, row)

    def _resolve(self) -> None:
        """Tell the deferred missing files that gc deleted from the others."""
        if not self._deferred:
            return
        deletions = recorded_deletions(
            self._session,
            self._campaign_id,
            {row.snapshot_filename for _, _, row in self._deferred},
        )
        for run_number, snapshot_id, row in self._deferred:
            path = row.snapshot_filename
            deletion = deletions.get(path)
            if deletion is not None:
                self._deleted[path] = deletion
                self._findings.no_longer_resumable(snapshot_id)
                continue
            bad = self._bad.get(path)
            if bad is not None:
                bad.needed_by.append(snapshot_id)
                continue
            problem = self._checker.problem(
                row.instance, path, row.snapshot_file_size, None
            )
            if problem is not None:
                self._note_bad(problem, run_number, snapshot_id, row)
        self._deferred.clear()

    def _note_bad(
        self, problem: MemberFileProblem, run_number: int, snapshot_id: int, row: Any
    ) -> None:
        self._bad[row.snapshot_filename] = _BadFile(
            problem,
            run_number,
            node_words(row.instance, row.num, row.id),
            row.id,
            [snapshot_id],
        )

    # ------------------------------------------------------ workflow snapshot files

    def _workflow_file(self, run: RunInfo, snapshot: StoredWorkflowSnapshot) -> None:
        if snapshot.path.startswith(NO_FILE_PREFIX):
            return  # a run without a snapshot folder has no files
        self.workflow_files += 1
        try:
            with open(snapshot.path, "rb") as stream:
                # read(n) would reserve n bytes first: look at the size instead
                too_large = os.fstat(stream.fileno()).st_size > MAX_WORKFLOW_FILE
                data = b"" if too_large else stream.read()
        except FileNotFoundError:
            self._file_problem("workflow_file_missing", run, snapshot, "is missing")
            return
        except (OSError, ValueError) as err:
            why = getattr(err, "strerror", None) or str(err)
            self._file_problem(
                "workflow_file_missing", run, snapshot, f"cannot be read ({why})"
            )
            return
        differs = (
            f"is larger than {MAX_WORKFLOW_FILE} bytes: not a workflow snapshot"
            if too_large
            else self._differences(run, snapshot, data)
        )
        if differs:
            self._file_problem("workflow_file_differs", run, snapshot, differs)

    def _differences(
        self, run: RunInfo, snapshot: StoredWorkflowSnapshot, data: bytes
    ) -> str | None:
        """How a workflow snapshot file differs from its rows; None if it does not."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "is not UTF-8 text"
        members = [
            Member(row.instance, metadata_from_row(row), row.is_restart)
            for row in snapshot.members
            if row.id is not None
        ]
        expected = resume_mapping(members)
        if text == render(expected, snapshot.description):
            description = snapshot.description
        else:
            try:
                config = ymmsl.load(text)
            except Exception as err:  # noqa: BLE001 - any failure: not yMMSL
                return f"is not yMMSL ({' '.join(str(err).split())[:200]})"
            found = {
                str(instance): str(path)
                for instance, path in (getattr(config, "resume", None) or {}).items()
            }
            wanted = {instance: str(Path(path)) for instance, path in expected.items()}
            if found != wanted:
                return "resumes " + _mapping_differences(found, wanted)
            description = getattr(config, "description", None) or ""
        model = _MODEL_NAMED.match(description)
        if model is not None and model.group(1) != run.model_name:
            return (
                f"names model {model.group(1)!r}, but the run's model is"
                f" {run.model_name!r}"
            )
        return None

    def _file_problem(
        self,
        kind: ProblemKind,
        run: RunInfo,
        snapshot: StoredWorkflowSnapshot,
        what: str,
    ) -> None:
        self._findings.add(
            Problem(
                kind,
                f"run {run.number}: workflow snapshot {snapshot.id}'s file"
                f" {snapshot.path} {what}",
                run=run.number,
                workflow_snapshot=snapshot.id,
                path=snapshot.path,
            )
        )


def _mapping_differences(found: dict[str, str], wanted: dict[str, str]) -> str:
    """The first few differences between a file's resume mapping and the rows'."""
    differences = []
    for instance in sorted(set(found) | set(wanted)):
        if instance not in found:
            differences.append(f"no {instance} (rows: {wanted[instance]})")
        elif instance not in wanted:
            differences.append(f"{instance} from {found[instance]} (not in the rows)")
        elif found[instance] != wanted[instance]:
            differences.append(
                f"{instance} from {found[instance]} (rows: {wanted[instance]})"
            )
    shown = "; ".join(differences[:3])
    if len(differences) > 3:
        shown += f"; and {len(differences) - 3} more"
    return shown
