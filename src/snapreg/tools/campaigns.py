"""Campaign summaries: every campaign's runs, lineage, counts and run status.

What ``snapreg campaigns`` shows, read in a constant number of queries whatever the
number of runs: per run its snapshot and workflow snapshot counts, what it resumed
from, its last activity, workflow snapshot files missing on disk, and whether it is
still being written (``running``), was left by a writer that died
(``interrupted``) or was closed (``ended``). On PostgreSQL a run is being written
exactly while its writer's session holds the run's advisory lock, which is what
the registry itself goes by; on SQLite, while the writer's process lives (same
host) or, for a writer on another host, while its heartbeat is no older than the
timeout that writer recorded (or the default minute, if it recorded none).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from snapreg.registry.lease import holder_timeout
from snapreg.storage import schema
from snapreg.storage.locks import held_writer_locks, writer_present

RunStatus = Literal["running", "interrupted", "ended"]


@dataclass(frozen=True)
class RunSummary:
    """One run of a campaign, with its lineage and counts.

    Attributes:
        number: 1 for the campaign's first run, then 2, 3, ...
        model_name: Name of the model the run simulated.
        started_at: When the run was created (UTC).
        snapshot_folder: Where its workflow snapshot files were written.
        resumed_from: Id of the workflow snapshot it resumed from, if any.
        resumed_from_run: Number of the run that workflow snapshot belongs to.
        snapshot_count: Snapshots registered by its instances (restart nodes are
            not counted).
        workflow_snapshot_count: Workflow snapshots found in the run.
        last_activity: Its newest registration, workflow snapshot or writer
            heartbeat (UTC).
        status: ``running`` while a live registry writes it, ``interrupted`` when
            its writer died without closing it (a crashed or killed manager),
            ``ended`` when its registry was closed.
        writer: Which process holds (or held, when interrupted) the right to write.
        missing_files: Its workflow snapshot files that are not on disk where their
            rows say (seen from this machine): ones that could not be written (a
            full or read-only folder; a registry writes them when it opens the run
            again) or that were deleted since.
    """

    number: int
    model_name: str
    started_at: datetime
    snapshot_folder: str | None
    resumed_from: int | None
    resumed_from_run: int | None
    snapshot_count: int
    workflow_snapshot_count: int
    last_activity: datetime
    status: RunStatus
    writer: str | None
    missing_files: int = 0


@dataclass(frozen=True)
class CampaignSummary:
    """A campaign and its runs, oldest first.

    Attributes:
        name: The campaign's name.
        created_at: When it was created (UTC).
        runs: Its runs.
    """

    name: str
    created_at: datetime
    runs: tuple[RunSummary, ...]

    @property
    def snapshot_count(self) -> int:
        """Snapshots registered over all runs."""
        return sum(run.snapshot_count for run in self.runs)

    @property
    def workflow_snapshot_count(self) -> int:
        """Workflow snapshots over all runs."""
        return sum(run.workflow_snapshot_count for run in self.runs)

    @property
    def last_activity(self) -> datetime:
        """The newest activity of any run, or the creation time without runs."""
        return max((run.last_activity for run in self.runs), default=self.created_at)


def campaign_summaries(session: Session) -> list[CampaignSummary]:
    """Every campaign with its runs, lineage and counts, by name.

    Five queries, and one more on PostgreSQL for the writer locks held.
    """
    node = schema.SnapshotNodeRow
    snapshot = schema.WorkflowSnapshotRow
    run = schema.RunRow
    node_counts = {
        run_id: (count, newest)
        for run_id, count, newest in session.execute(
            select(node.run_id, func.count(), func.max(node.registered_at))
            .where(node.is_restart.is_(False))
            .group_by(node.run_id)
        )
    }
    snapshot_counts = {
        run_id: (count, newest)
        for run_id, count, newest in session.execute(
            select(
                snapshot.run_id, func.count(), func.max(snapshot.created_at)
            ).group_by(snapshot.run_id)
        )
    }
    missing_files: Counter[int] = Counter(
        run_id
        for run_id, path in session.execute(
            # a run without a snapshot folder writes no files
            select(snapshot.run_id, snapshot.path)
            .join(run, run.id == snapshot.run_id)
            .where(run.snapshot_folder.is_not(None))
            .execution_options(yield_per=10_000)
        )
        if not os.path.exists(path)
    )
    held_locks = (
        held_writer_locks(session.connection())
        if session.get_bind().dialect.name == "postgresql"
        else None
    )
    resumed_snapshot = aliased(snapshot)
    resumed_run = aliased(run)
    runs_by_campaign: dict[int, list[RunSummary]] = {}
    for row, resumed_from_run in session.execute(
        select(run, resumed_run.number)
        .outerjoin(
            resumed_snapshot,
            resumed_snapshot.id == run.resumed_from_workflow_snapshot_id,
        )
        .outerjoin(resumed_run, resumed_run.id == resumed_snapshot.run_id)
        .order_by(run.campaign_id, run.number)
    ):
        nodes, newest_node = node_counts.get(row.id, (0, None))
        found, newest_snapshot = snapshot_counts.get(row.id, (0, None))
        moments = [
            _utc(moment)
            for moment in (
                row.started_at,
                newest_node,
                newest_snapshot,
                row.writer_heartbeat_at,
            )
            if moment is not None
        ]
        runs_by_campaign.setdefault(row.campaign_id, []).append(
            RunSummary(
                number=row.number,
                model_name=row.model_name,
                started_at=row.started_at,
                snapshot_folder=row.snapshot_folder,
                resumed_from=row.resumed_from_workflow_snapshot_id,
                resumed_from_run=resumed_from_run,
                snapshot_count=nodes,
                workflow_snapshot_count=found,
                last_activity=max(moments),
                status=_run_status(row, held_locks),
                writer=None
                if row.writer_token is None
                else f"pid {row.writer_pid} on {row.writer_host}",
                missing_files=missing_files[row.id],
            )
        )
    return [
        CampaignSummary(
            name=row.name,
            created_at=row.created_at,
            runs=tuple(runs_by_campaign.get(row.id, [])),
        )
        for row in session.scalars(
            select(schema.CampaignRow).order_by(schema.CampaignRow.name)
        )
    ]


def _utc(moment: datetime | str) -> datetime:
    # Aggregates bypass the column type, so SQLite hands back naive UTC values.
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _run_status(row: schema.RunRow, held_locks: set[int] | None) -> RunStatus:
    """Whether a run is being written, was left by a dead writer, or was closed.

    Args:
        row: The run.
        held_locks: PostgreSQL: the writer locks held now (see
            :func:`~snapreg.storage.locks.held_writer_locks`); None on SQLite.
    """
    if row.writer_token is None:
        return "ended"
    # PostgreSQL: the writer's session holds the lock for as long as the writer
    # lives, whatever its heartbeat says; the registry judges by the same lock
    present = writer_present(row.id, row.writer_host, row.writer_pid, held_locks)
    if present is not None:
        return "running" if present else "interrupted"
    heartbeat = row.writer_heartbeat_at or row.writer_since
    if heartbeat is None:
        return "interrupted"
    stale_after = timedelta(seconds=holder_timeout(row))  # the writer's own
    fresh = datetime.now(timezone.utc) - _utc(heartbeat) < stale_after
    return "running" if fresh else "interrupted"
