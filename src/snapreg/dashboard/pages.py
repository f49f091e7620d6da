"""What each dashboard page shows, read from the database: plain data, no web.

:class:`DashboardData` opens the database once, read-only, the way every reader
does (:class:`~snapreg.storage.readonly.ReadOnlyStore`, and
:class:`~snapreg.tools.reader.DatabaseReader` for the campaign summaries and the
resume files), and gathers each page from the library's read-only tools: the runs
and their status from the reader, whether a workflow snapshot can be resumed from
:func:`~snapreg.tools.restart_points.resumability`, why there is no newer one from
:func:`~snapreg.tools.explain.explain`, the timeline from
:func:`~snapreg.tools.plot.svg_text`, what ``gc --keep N`` would free from
:func:`~snapreg.tools.gc.plan_cleanup`. What the campaign page and the run page
show is defined with how it is read, in :mod:`~snapreg.dashboard.campaign_page`
and :mod:`~snapreg.dashboard.run_page`.

A page must load in well under a second on a campaign with a million retired
nodes, so what grows with the history is bounded or kept apart: a page lists the
newest workflow snapshots of a run
(:data:`~snapreg.dashboard.run_page.SNAPSHOTS_SHOWN`), explains the run from its
active nodes only, draws only the newest nodes of a run (:data:`TIMELINE_NODES`),
and the disk figures, which ``stat`` every snapshot file of the campaign, are a
part of their own that the page fetches after it is shown.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from snapreg.dashboard.campaign_page import CampaignPage, RestartPoints, restart_points
from snapreg.dashboard.run_page import RunPage, run_snapshots
from snapreg.errors import NotFoundError
from snapreg.rules.snapshot import WorkflowSnapshot
from snapreg.storage import queries, schema
from snapreg.storage.readonly import Closing, ReadOnlyStore
from snapreg.tools.campaigns import CampaignSummary
from snapreg.tools.explain import explain
from snapreg.tools.explain_output import explanation_lines
from snapreg.tools.gc import CleanupPlan, plan_cleanup
from snapreg.tools.plot import svg_text
from snapreg.tools.plot_layout import TimeAxis
from snapreg.tools.reader import DatabaseReader
from snapreg.tools.restart_points import FileChecker
from snapreg.tools.run_graph import RunGraph, read_run_graph

_T = TypeVar("_T")

#: At most this many of a run's newest nodes are drawn, besides its active ones.
TIMELINE_NODES = 3000
#: Rendered timelines kept, by run and state.
_TIMELINES_KEPT = 16
#: Disk figures kept, by campaign and keep.
_DISKS_KEPT = 16


@dataclass(frozen=True)
class DiskUsage:
    """The disk a campaign's instance snapshot files take, and what gc would free.

    Attributes:
        campaign: The campaign.
        files: Distinct snapshot files its nodes name that are there now.
        bytes: Their size.
        missing: Files its nodes name that are not there (deleted or lost).
        plan: What ``snapreg gc --keep N`` would delete.
        computed_at: When this was computed (UTC).
    """

    campaign: str
    files: int
    bytes: int
    missing: int
    plan: CleanupPlan
    computed_at: datetime


class DashboardData(Closing):
    """Every page's data, read from one database, read-only."""

    def __init__(self, database_url: str) -> None:
        """Open the database for reading; never create or change it.

        Raises:
            ConfigurationError: a URL that is not usable for reading.
            NotFoundError: no database, or no snapreg schema, there.
            SchemaVersionError: a schema this snapreg does not read.
            StorageUnavailableError: the database cannot be reached.
        """
        self.database_url = database_url
        self._reader = DatabaseReader(database_url)
        try:
            self._store = ReadOnlyStore(database_url, check_schema=True)
        except BaseException:
            self._reader.close()
            raise
        self.location = self._store.location
        # matplotlib's settings are global: one timeline is drawn at a time
        self._drawing = threading.Lock()
        self._timelines: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._measuring = threading.Lock()
        self._disks: dict[tuple[str, int], tuple[str, DiskUsage]] = {}

    def close(self) -> None:
        """Release the database connections."""
        self._reader.close()
        self._store.close()

    # ------------------------------------------------------------------ state

    def state(self) -> str:
        """A short token that changes whenever what the pages show may change.

        A new node, workflow snapshot, run, campaign or recorded deletion, a
        writer that comes, goes or shows a sign of life: five cheap queries,
        fit to be asked every second or two.
        """

        def read(session: Session) -> str:
            parts: list[object] = [
                session.scalar(select(func.max(schema.SnapshotNodeRow.id))),
                session.scalar(select(func.max(schema.WorkflowSnapshotRow.id))),
                session.scalar(select(func.max(schema.DeletedSnapshotFileRow.id))),
                session.scalar(select(func.max(schema.CampaignRow.id))),
            ]
            run = schema.RunRow
            parts.extend(
                session.execute(
                    select(
                        run.id,
                        run.writer_token,
                        run.writer_heartbeat_at,
                    ).order_by(run.id)
                ).all()
            )
            return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]

        return self._read(read)

    # -------------------------------------------------------------- campaigns

    def campaigns(self) -> list[tuple[CampaignSummary, RestartPoints]]:
        """Every campaign with its runs and where it can resume from, by name."""
        return [
            (summary, self._read(partial(restart_points, name=summary.name)))
            for summary in self._reader.campaigns()
        ]

    def campaign(self, name: str) -> CampaignPage:
        """One campaign's page.

        Raises:
            NotFoundError: no such campaign.
        """
        summary = self._summary(name)
        return CampaignPage(summary, self._read(lambda s: restart_points(s, name)))

    def run(
        self, name: str, number: int, summary: CampaignSummary | None = None
    ) -> RunPage:
        """One run's page: its newest workflow snapshots and ``explain``.

        Args:
            name: The campaign.
            number: The run's number.
            summary: The campaign's summary, when the caller has just read it.

        Raises:
            NotFoundError: no such campaign or run.
        """
        summary = summary or self._summary(name)
        found = [run for run in summary.runs if run.number == number]
        if not found:
            raise NotFoundError(f"campaign {name!r} has no run {number}")

        def read(session: Session) -> RunPage:
            campaign_id = queries.campaign_row(session, name).id
            snapshots, count = run_snapshots(session, campaign_id, name, number)
            graph = read_run_graph(session, name, run=number, active_only=True)
            explanation = explain(graph)
            return RunPage(
                campaign=summary,
                run=found[0],
                snapshots=snapshots,
                snapshot_count=count,
                explanation=tuple(explanation_lines(explanation)),
                up_to_date=explanation.up_to_date,
                blocking=tuple(
                    item.instance
                    for item in explanation.instances
                    if item.blocking_peers and not item.node.is_restart
                ),
            )

        return self._read(read)

    def timeline(self, name: str, number: int, time_axis: TimeAxis) -> str:
        """A run's timeline as SVG, the newest :data:`TIMELINE_NODES` nodes drawn.

        Drawn once per state of the run: kept until it registers more.

        Raises:
            NotFoundError: no such campaign or run.
        """

        def read(session: Session) -> tuple[tuple[object, ...], RunGraph]:
            graph = read_run_graph(session, name, run=number, newest=TIMELINE_NODES)
            key = (
                name,
                number,
                time_axis,
                max(graph.nodes, default=0),
                len(graph.nodes),
                sum(1 for node in graph.nodes.values() if node.active),
                len(graph.workflow_snapshots),
            )
            return key, graph

        with self._drawing:
            key, graph = self._read(read)
            svg = self._timelines.get(key)
            if svg is None:
                svg = svg_text(graph, time_axis=time_axis)
                self._timelines[key] = svg
                while len(self._timelines) > _TIMELINES_KEPT:
                    self._timelines.popitem(last=False)
            self._timelines.move_to_end(key)
            return svg

    def disk(self, name: str, keep: int, *, again: bool = False) -> DiskUsage:
        """The disk the campaign's snapshot files take, and what gc would free.

        Stats every snapshot file the campaign's nodes name, and works out gc's
        plan: about 16 s for a million. So it is worked out once per state
        of the database (:meth:`state`), unless asked ``again`` (files can come
        and go without the database knowing), and one at a time: a request
        that comes while it is being worked out waits for that answer.

        Raises:
            NotFoundError: no such campaign.
            ConfigurationError: ``keep`` below 1.
        """
        with self._measuring:
            state = self.state()
            kept = self._disks.get((name, keep))
            if kept is not None and kept[0] == state and not again:
                return kept[1]
            usage = self._measure(name, keep)
            self._disks[(name, keep)] = (state, usage)
            while len(self._disks) > _DISKS_KEPT:
                del self._disks[next(iter(self._disks))]
            return usage

    def _measure(self, name: str, keep: int) -> DiskUsage:
        plan = plan_cleanup(self.database_url, name, keep)

        def read(session: Session) -> list[str]:
            node = schema.SnapshotNodeRow
            run = schema.RunRow
            campaign_id = queries.campaign_row(session, name).id
            # a row per file: Core's results, without the ORM's handling of each
            return list(
                session.connection().scalars(
                    select(node.snapshot_filename)
                    .distinct()
                    .join(run, run.id == node.run_id)
                    .where(
                        run.campaign_id == campaign_id,
                        node.is_restart.is_(False),
                        node.snapshot_filename != "",
                    )
                )
            )

        checker = FileChecker()
        files = total = missing = 0
        for path in self._read(read):
            size = checker.size(path)
            if size is None:
                missing += 1
            else:
                files += 1
                total += size
        return DiskUsage(name, files, total, missing, plan, datetime.now(timezone.utc))

    # ------------------------------------------------------- workflow snapshots

    def workflow_snapshot(self, snapshot_id: int) -> WorkflowSnapshot:
        """One workflow snapshot by id.

        Raises:
            NotFoundError: no such workflow snapshot.
        """
        return self._reader.workflow_snapshot(snapshot_id)

    def resume_text(self, snapshot: WorkflowSnapshot, *, with_config: bool) -> str:
        """The yMMSL that resumes from a workflow snapshot (see ``snapreg export``).

        Raises:
            NotFoundError: its run is gone.
            ConfigurationError: the stored configuration cannot be read back.
        """
        return self._reader.resume_text(snapshot, with_config=with_config)

    # -------------------------------------------------------------- plumbing

    def _summary(self, name: str) -> CampaignSummary:
        for summary in self._reader.campaigns():
            if summary.name == name:
                return summary
        raise NotFoundError(f"no campaign {name!r} in {self.location}")

    def _read(self, work: Callable[[Session], _T]) -> _T:
        return self._store.read(work)
