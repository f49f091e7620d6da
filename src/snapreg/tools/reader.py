"""Read-only access to a snapreg database: what the command line shows.

A :class:`DatabaseReader` opens a database the way every reader does, through
:class:`~snapreg.storage.readonly.ReadOnlyStore`: read-only by the database
itself, nothing created, nothing migrated. A missing SQLite file, a database
without snapreg's schema and a schema that does not match the code are refused with
a :class:`~snapreg.errors.SnapregError` that says what to do, so that looking at a
campaign can never change it. Readers never block the registry that writes the same
database (SQLite runs in WAL mode).

Every method runs one short transaction and issues a constant number of queries
(per run, for the instance history), reusing :mod:`snapreg.storage.queries` where it
fits.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

import ymmsl
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from snapreg.errors import ConfigurationError, NotFoundError, UnknownInstanceError
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import ConduitInfo, Topology
from snapreg.rules.workflow_file import render
from snapreg.storage import queries, schema
from snapreg.storage.readonly import Closing, ReadOnlyStore
from snapreg.storage.transactions import host_and_pid, process_alive
from snapreg.storage.versions import head_revision
from snapreg.tools.restart_points import (
    Fallback,
    FileChecker,
    Resumability,
    newest_resumable,
    resumability,
)

_T = TypeVar("_T")

#: A run whose writer has not shown a sign of life for this long is not running.
STALE_WRITER_AFTER = timedelta(seconds=60)

RunStatus = Literal["running", "interrupted", "ended"]


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database is and which schema revision it has.

    Attributes:
        location: The database URL, password hidden.
        revision: Its schema revision; None when it has no snapreg schema.
        head: The newest revision this snapreg knows.
    """

    location: str
    revision: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        """Whether the schema is the one this snapreg writes."""
        return self.revision == self.head


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


@dataclass(frozen=True)
class InstanceHistory:
    """Every snapshot node of one instance in one run, retired ones included.

    Attributes:
        run: Number of the run.
        nodes: The nodes, ascending num, each with the peer nodes it was
            consistent with (in :attr:`SnapshotNode.consistent_peers`).
    """

    run: int
    nodes: tuple[SnapshotNode, ...]


class DatabaseReader(Closing):
    """A read-only view of a snapreg database.

    Use it as a context manager, or call :meth:`close`, to release the
    connections.
    """

    def __init__(self, database_url: str, *, check_schema: bool = True) -> None:
        """Open a database for reading; never create or migrate it.

        Args:
            database_url: SQLAlchemy URL of the database.
            check_schema: Refuse a database whose schema is missing or does not
                match this snapreg (off only to report the revision).

        Raises:
            ConfigurationError: a URL that is not usable for reading.
            NotFoundError: no database (or no snapreg schema) there.
            SchemaOutOfDateError: an older schema; the message names the command
                that upgrades it.
            SchemaTooNewError: a schema written by a newer snapreg.
            StorageUnavailableError: the database cannot be reached.
        """
        self._store = ReadOnlyStore(database_url, check_schema=check_schema)
        self.location = self._store.location

    def close(self) -> None:
        """Release the database connections."""
        self._store.close()

    # ------------------------------------------------------------------ schema

    def schema_status(self) -> SchemaStatus:
        """The database's schema revision next to the newest one.

        Raises:
            ForeignDatabaseError: another application's database.
            StorageUnavailableError: the database cannot be reached.
        """
        return SchemaStatus(self.location, self._store.revision(), head_revision())

    # --------------------------------------------------------------- campaigns

    def campaigns(self) -> list[CampaignSummary]:
        """Every campaign with its runs, lineage and counts, by name (4 queries)."""
        return self._read(_campaign_summaries)

    def campaign_name(self, requested: str | None) -> str:
        """The campaign a command works on.

        Args:
            requested: The name the user gave, or None for the only one there is.

        Raises:
            NotFoundError: no such campaign, no campaign at all, or several to
                choose from (listing them).
        """
        return self._read(
            lambda session: campaign_name(session, requested, self.location)
        )

    # ------------------------------------------------------- workflow snapshots

    def workflow_snapshots(
        self, campaign: str, *, run: int | None = None
    ) -> list[WorkflowSnapshot]:
        """A campaign's workflow snapshots, oldest first (optionally of one run).

        Raises:
            NotFoundError: no such campaign, or no such run in it.
        """

        def load(session: Session) -> list[WorkflowSnapshot]:
            row = queries.campaign_row(session, campaign)
            ids = None
            if run is not None:
                run_id = _run_row(session, row, run).id
                ids = session.scalars(
                    select(schema.WorkflowSnapshotRow.id).where(
                        schema.WorkflowSnapshotRow.run_id == run_id
                    )
                ).all()
            return queries.workflow_snapshots(session, row.id, row.name, ids=ids)

        return self._read(load)

    def workflow_snapshot(
        self, workflow_snapshot_id: int, *, campaign: str | None = None
    ) -> WorkflowSnapshot:
        """One workflow snapshot by id, with its members.

        Args:
            workflow_snapshot_id: Its id (unique in the database).
            campaign: If given, the campaign it must belong to.

        Raises:
            NotFoundError: no such workflow snapshot (in that campaign).
        """

        def load(session: Session) -> WorkflowSnapshot:
            found = None
            # an id no row can have would overflow the driver (SQLite) or the
            # column (PostgreSQL): it is simply not there
            if 1 <= workflow_snapshot_id <= schema.MAX_ID:
                found = session.execute(
                    select(schema.CampaignRow.id, schema.CampaignRow.name)
                    .join(
                        schema.RunRow,
                        schema.RunRow.campaign_id == schema.CampaignRow.id,
                    )
                    .join(
                        schema.WorkflowSnapshotRow,
                        schema.WorkflowSnapshotRow.run_id == schema.RunRow.id,
                    )
                    .where(schema.WorkflowSnapshotRow.id == workflow_snapshot_id)
                ).first()
            if campaign is not None:
                queries.campaign_row(session, campaign)
            if found is None or (campaign is not None and found.name != campaign):
                where = f"campaign {campaign!r}" if campaign else self.location
                raise NotFoundError(
                    f"no workflow snapshot {workflow_snapshot_id} in {where}"
                    " (snapreg workflows lists them)"
                )
            return queries.workflow_snapshots(
                session, found.id, found.name, ids=[workflow_snapshot_id]
            )[0]

        return self._read(load)

    def latest_workflow_snapshot(self, campaign: str) -> WorkflowSnapshot | None:
        """The campaign's newest workflow snapshot, or None if it has none.

        Raises:
            NotFoundError: no such campaign.
        """

        def load(session: Session) -> WorkflowSnapshot | None:
            row = queries.campaign_row(session, campaign)
            newest = session.scalar(
                select(func.max(schema.WorkflowSnapshotRow.id))
                .join(
                    schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id
                )
                .where(schema.RunRow.campaign_id == row.id)
            )
            if newest is None:
                return None
            return queries.workflow_snapshots(session, row.id, row.name, ids=[newest])[
                0
            ]

        return self._read(load)

    # ---------------------------------------------------------- restart points

    def resumability(
        self,
        campaign: str,
        workflow_snapshot_ids: Sequence[int],
        checker: FileChecker | None = None,
    ) -> dict[int, Resumability]:
        """Whether each of these workflow snapshots of a campaign can be resumed from.

        Args:
            campaign: The campaign they belong to.
            workflow_snapshot_ids: Their ids.
            checker: Stats each snapshot file once; share one across the calls of
                a command.

        Raises:
            NotFoundError: no such campaign.
        """
        return self._read(
            lambda session: resumability(
                session,
                queries.campaign_row(session, campaign).id,
                workflow_snapshot_ids,
                checker,
            )
        )

    def newest_resumable(
        self, campaign: str, checker: FileChecker | None = None
    ) -> tuple[WorkflowSnapshot | None, Fallback]:
        """The campaign's newest workflow snapshot that can be resumed from.

        Returns:
            That workflow snapshot (None when there is none, or none at all) and
            the :class:`~snapreg.tools.restart_points.Fallback` that names the newer
            ones passed over and why.

        Raises:
            NotFoundError: no such campaign.
        """

        def load(session: Session) -> tuple[WorkflowSnapshot | None, Fallback]:
            row = queries.campaign_row(session, campaign)
            fallback = newest_resumable(session, row.id, row.name, checker)
            if fallback.chosen is None:
                return None, fallback
            [chosen] = queries.workflow_snapshots(
                session, row.id, row.name, ids=[fallback.chosen]
            )
            return chosen, fallback

        return self._read(load)

    def resume_text(self, snapshot: WorkflowSnapshot, *, with_config: bool) -> str:
        """The yMMSL that resumes a simulation from a workflow snapshot.

        Args:
            snapshot: The workflow snapshot.
            with_config: Merge the ``resume`` section into the configuration its run
                was started with, giving a complete configuration that
                ``muscle_manager`` runs as is; otherwise only the ``resume``
                section and description, like the workflow snapshot's own file.

        Raises:
            NotFoundError: its run is gone.
            ConfigurationError: the stored configuration cannot be read back.
        """
        configuration = self._read(
            lambda session: (
                _run_row(
                    session,
                    queries.campaign_row(session, snapshot.campaign),
                    snapshot.run,
                ).configuration
            )
        )
        resume = snapshot.resume_files
        version = "v0.1" if configuration.startswith("ymmsl_version: v0.1") else "v0.2"
        if not with_config:
            return render(resume, snapshot.description, ymmsl_version=version)
        try:
            document: Any = ymmsl.load(configuration)
        except Exception as err:  # yatiml raises many kinds; all mean unreadable
            raise ConfigurationError(
                f"the configuration stored for run {snapshot.run} of campaign"
                f" {snapshot.campaign!r} cannot be read back: {err}"
            ) from err
        # Replaced, not merged: an instance missing from the mapping must start
        # from scratch even if the run itself had resumed it.
        resume_only: Any = ymmsl.load(
            render(resume, snapshot.description, ymmsl_version=version)
        )
        document.resume = resume_only.resume
        document.description = snapshot.description
        return str(ymmsl.dump(document))

    # ------------------------------------------------------------------ history

    def instance_history(
        self, campaign: str, instance: str, *, run: int | None = None
    ) -> list[InstanceHistory]:
        """An instance's snapshot nodes, active and retired, per run.

        Args:
            campaign: The campaign.
            instance: The instance, e.g. ``macro`` or ``micro[2]``.
            run: Only this run; default: every run of the campaign.

        Raises:
            NotFoundError: no such campaign or run.
            UnknownInstanceError: no run of the campaign has that instance.
        """

        def load(session: Session) -> list[InstanceHistory]:
            campaign_row = queries.campaign_row(session, campaign)
            if run is not None:
                runs = [_run_row(session, campaign_row, run)]
            else:
                runs = list(
                    session.scalars(
                        select(schema.RunRow)
                        .where(schema.RunRow.campaign_id == campaign_row.id)
                        .order_by(schema.RunRow.number)
                    )
                )
            topologies = [topology_from_signature(row.topology) for row in runs]
            name = str(instance).replace(" ", "")
            if not any(name in topology.instance_set for topology in topologies):
                if not topologies:
                    raise UnknownInstanceError(
                        f"campaign {campaign!r} has no runs, so no instance {name!r}"
                    )
                topologies[-1].check_instance(name)
            return [
                InstanceHistory(
                    row.number,
                    tuple(
                        queries.nodes_with_edges(
                            session,
                            row.id,
                            name,
                            topology,
                            row.number,
                            active_only=False,
                        )
                    ),
                )
                for row, topology in zip(runs, topologies, strict=True)
                if name in topology.instance_set
            ]

        return self._read(load)

    # ---------------------------------------------------------------- plumbing

    def _read(self, work: Callable[[Session], _T]) -> _T:
        return self._store.read(work)


def campaign_name(session: Session, requested: str | None, location: str) -> str:
    """The campaign a command works on (see :meth:`DatabaseReader.campaign_name`).

    Args:
        session: A reading session.
        requested: The name the user gave, or None for the only one there is.
        location: The database, for the messages.

    Raises:
        NotFoundError: no such campaign, no campaign at all, or several to
            choose from (listing them).
    """
    if requested is not None:
        return queries.campaign_row(session, requested).name
    names = session.scalars(
        select(schema.CampaignRow.name).order_by(schema.CampaignRow.name)
    ).all()
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFoundError(f"{location} has no campaigns yet")
    raise NotFoundError(
        f"{location} has {len(names)} campaigns; choose one with --campaign"
        f" ({', '.join(names)})"
    )


def topology_from_signature(signature: str) -> Topology:
    """The topology a run stored as its canonical JSON signature."""
    data: dict[str, Any] = json.loads(signature)
    return Topology(
        str(data["model"]),
        {
            name: tuple(int(size) for size in dims)
            for name, dims in data["components"].items()
        },
        tuple(ConduitInfo(*conduit) for conduit in data["conduits"]),
    )


def _run_row(
    session: Session, campaign: schema.CampaignRow, number: int
) -> schema.RunRow:
    found = (
        session.scalars(
            select(schema.RunRow).where(
                schema.RunRow.campaign_id == campaign.id, schema.RunRow.number == number
            )
        ).one_or_none()
        if 1 <= number <= schema.MAX_NUMBER  # else no row can have it
        else None
    )
    if found is None:
        raise NotFoundError(f"campaign {campaign.name!r} has no run {number}")
    return found


def _campaign_summaries(session: Session) -> list[CampaignSummary]:
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
                status=_run_status(row),
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


def _run_status(row: schema.RunRow) -> RunStatus:
    """Whether a run is being written, was left by a dead writer, or was closed."""
    if row.writer_token is None:
        return "ended"
    host, _ = host_and_pid()
    if row.writer_host == host and row.writer_pid is not None:
        return "running" if process_alive(row.writer_pid) else "interrupted"
    heartbeat = row.writer_heartbeat_at or row.writer_since
    if heartbeat is None:
        return "interrupted"
    fresh = datetime.now(timezone.utc) - _utc(heartbeat) < STALE_WRITER_AFTER
    return "running" if fresh else "interrupted"
