"""The campaign page's data: where a campaign can resume from.

:func:`restart_points` finds the campaign's newest workflow snapshot, whether it
can be resumed from, and the newest one that can when it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

from sqlalchemy import select
from sqlalchemy.orm import Session

from snapreg.storage import queries, schema
from snapreg.tools.campaigns import CampaignSummary
from snapreg.tools.restart_points import Resumability, newest_resumable


@dataclass(frozen=True)
class RestartPoint:
    """A workflow snapshot as the pages show it.

    Attributes:
        id: Its id.
        run: The number of its run.
        path: Its yMMSL file.
        created_at: When it was found (UTC).
    """

    id: int
    run: int
    path: str
    created_at: datetime

    @property
    def file_name(self) -> str:
        """The file's name without its folder."""
        return PurePath(self.path).name


@dataclass(frozen=True)
class RestartPoints:
    """Where a campaign can resume from.

    Attributes:
        newest: Its newest workflow snapshot; None when it has none.
        problems: Why the newest cannot be resumed from, one line each; empty
            when it can.
        newest_resumable: The newest workflow snapshot that can be resumed from,
            when that is not the newest; None when it is, or when none can.
        searched: How many workflow snapshots were checked, newest first, to
            find it (all of them when none can be resumed from).
    """

    newest: RestartPoint | None
    problems: tuple[str, ...]
    newest_resumable: RestartPoint | None
    searched: int

    @property
    def resumable(self) -> bool:
        """Whether the newest workflow snapshot can be resumed from."""
        return self.newest is not None and not self.problems


@dataclass(frozen=True)
class CampaignPage:
    """One campaign: its runs and where it can resume from."""

    summary: CampaignSummary
    restart: RestartPoints


def problems(found: Resumability) -> tuple[str, ...]:
    """Why a workflow snapshot cannot be resumed from, one line each."""
    return tuple(problem.describe() for problem in found.problems)


def restart_points(session: Session, name: str) -> RestartPoints:
    """The campaign's newest workflow snapshot, whether it can be resumed from, and
    the newest one that can when it cannot (:func:`newest_resumable`)."""
    campaign_id = queries.campaign_row(session, name).id
    fallback = newest_resumable(session, campaign_id, name)
    newest = (
        fallback.skipped[0].workflow_snapshot_id
        if fallback.skipped
        else fallback.chosen
    )
    if newest is None:
        return RestartPoints(None, (), None, 0)
    wanted = [newest] if fallback.chosen is None else [newest, fallback.chosen]
    snapshot = schema.WorkflowSnapshotRow
    run = schema.RunRow
    points = {
        row[0]: RestartPoint(*row)
        for row in session.execute(
            select(snapshot.id, run.number, snapshot.path, snapshot.created_at)
            .join(run, run.id == snapshot.run_id)
            .where(snapshot.id.in_(wanted))
        )
    }
    if not fallback.skipped:
        return RestartPoints(points[newest], (), None, 1)
    return RestartPoints(
        points[newest],
        problems(fallback.skipped[0]),
        None if fallback.chosen is None else points[fallback.chosen],
        len(fallback.skipped) + (fallback.chosen is not None),
    )
