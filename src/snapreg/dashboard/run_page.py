"""The run page's data: a run's newest workflow snapshots, each with its members.

The rest of the run page, ``snapreg explain``'s answer, is gathered by
:meth:`~snapreg.dashboard.pages.DashboardData.run`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from snapreg.dashboard.campaign_page import RestartPoint, problems
from snapreg.rules.snapshot import WorkflowSnapshot
from snapreg.storage import queries, schema
from snapreg.tools.campaigns import CampaignSummary, RunSummary
from snapreg.tools.restart_points import resumability

#: Workflow snapshots listed per run, newest first.
SNAPSHOTS_SHOWN = 50


@dataclass(frozen=True)
class SnapshotRow:
    """One workflow snapshot in a run's table.

    Attributes:
        point: The workflow snapshot.
        members: Its members as ``instance #num`` (``instance (restart)`` for a
            restart node), by instance.
        problems: Why it cannot be resumed from; empty when it can.
    """

    point: RestartPoint
    members: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RunPage:
    """One run: its summary, its newest workflow snapshots and ``explain``.

    Attributes:
        campaign: The campaign's summary.
        run: The run's.
        snapshots: Its newest workflow snapshots, newest first.
        snapshot_count: How many it has.
        explanation: ``snapreg explain``'s answer, line by line.
        up_to_date: Whether every instance's newest snapshot is in the run's
            newest workflow snapshot.
        blocking: The instances whose newest snapshot has a peer without any
            consistent one: those that hold back a newer workflow snapshot.
    """

    campaign: CampaignSummary
    run: RunSummary
    snapshots: tuple[SnapshotRow, ...]
    snapshot_count: int
    explanation: tuple[str, ...]
    up_to_date: bool
    blocking: tuple[str, ...]


def _point(snapshot: WorkflowSnapshot) -> RestartPoint:
    return RestartPoint(
        snapshot.id,
        snapshot.run,
        str(snapshot.path) if snapshot.path is not None else "",
        snapshot.created_at,
    )


def run_snapshots(
    session: Session, campaign_id: int, name: str, number: int
) -> tuple[tuple[SnapshotRow, ...], int]:
    """A run's newest :data:`SNAPSHOTS_SHOWN` workflow snapshots, and its count."""
    snapshot = schema.WorkflowSnapshotRow
    run = schema.RunRow
    run_id = session.scalar(
        select(run.id).where(run.campaign_id == campaign_id, run.number == number)
    )
    count = session.scalar(
        select(func.count()).select_from(snapshot).where(snapshot.run_id == run_id)
    )
    ids = list(
        session.scalars(
            select(snapshot.id)
            .where(snapshot.run_id == run_id)
            .order_by(snapshot.id.desc())
            .limit(SNAPSHOTS_SHOWN)
        )
    )
    found = queries.workflow_snapshots(session, campaign_id, name, ids=ids)
    checked = resumability(session, campaign_id, ids)
    rows = tuple(
        SnapshotRow(
            _point(item),
            tuple(
                f"{node.instance} (restart)"
                if node.is_restart
                else f"{node.instance} #{node.num}"
                for node in item.nodes
            ),
            problems(checked[item.id]),
        )
        for item in reversed(found)
    )
    return rows, count or 0
