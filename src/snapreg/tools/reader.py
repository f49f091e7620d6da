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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ymmsl
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from snapreg.errors import ConfigurationError, NotFoundError, UnknownInstanceError
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import ConduitInfo, Topology
from snapreg.rules.workflow_file import render
from snapreg.storage import queries, schema
from snapreg.storage.readonly import Closing, ReadOnlyStore
from snapreg.storage.versions import head_revision
from snapreg.tools.campaigns import CampaignSummary, campaign_summaries
from snapreg.tools.restart_points import (
    Fallback,
    FileChecker,
    Resumability,
    newest_resumable,
    resumability,
)

_T = TypeVar("_T")


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
        """Every campaign with its runs, lineage, counts and status, by name.

        See :mod:`snapreg.tools.campaigns`.
        """
        return self._read(campaign_summaries)

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
