"""Campaigns, runs and the right to write a run.

Opening a registry either continues a campaign's latest run (same topology, the
writer lease taken over from a holder that is gone) or creates a new run: its row,
its restart nodes (one per instance, num 1, with their edges) and the per-run
topology rows the SQL views use. Openers of one campaign take turns (SQLite's
write lock; a PostgreSQL advisory lock per campaign), so that processes started at
the same instant each find what the one before them did.

The writer lease lives on the run row: holder's host, pid, random token and a
heartbeat written by the database's clock. On PostgreSQL the holder's own database
session also holds an advisory lock on the run for the holder's whole life: the
run is taken over exactly when that session has ended. On SQLite a holder is gone
when its process is, or when its heartbeat is older than the timeout. The first
statement of every write transaction of a registry checks that the lease still
holds its token (:func:`snapreg.storage.statements.allocate_many`), and stops it if not.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from snapreg.errors import (
    ConfigurationError,
    NotFoundError,
    TopologyMismatchError,
    WriterConflictError,
)
from snapreg.rules.graph import ActiveGraph
from snapreg.rules.instances import split_instance
from snapreg.rules.metadata import restart_metadata, storable_text
from snapreg.rules.topology import Topology
from snapreg.storage import codecs, queries, schema, statements
from snapreg.storage.transactions import host_and_pid, process_alive

_logger = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a SQLite writer may be taken over.
DEFAULT_WRITER_TIMEOUT = 60.0

# campaign.name is VARCHAR(255); row ids are 64-bit on PostgreSQL
MAX_CAMPAIGN_NAME_LENGTH = 255
MAX_ROW_ID = 2**63 - 1


def check_arguments(
    snapshot_folder: Any,
    topology_store: Any,
    *,
    database_url: Any,
    campaign: Any,
    new_run: Any,
    resumed_from: Any,
    upgrade: Any,
    writer_timeout: Any,
) -> None:
    """Refuse unusable registry arguments before anything touches the database.

    Raises:
        ConfigurationError: naming the argument.
    """
    if snapshot_folder is not None and not isinstance(
        snapshot_folder, (str, os.PathLike)
    ):
        raise ConfigurationError(
            f"snapshot_folder must be a path or None, not {snapshot_folder!r}"
        )
    if database_url is not None and not (
        (isinstance(database_url, str) and database_url.strip())
        or isinstance(database_url, URL)
    ):
        # only None means "the default": an empty or mistyped URL is a mistake
        raise ConfigurationError(
            f"database_url must be a SQLAlchemy URL or None, not {database_url!r}"
        )
    if topology_store is not None and not callable(
        getattr(topology_store, "get_peer_instances", None)
    ):
        raise ConfigurationError("topology_store must have a get_peer_instances method")
    if campaign is not None and (
        not isinstance(campaign, str)
        or not campaign.strip()
        or len(campaign) > MAX_CAMPAIGN_NAME_LENGTH
        or not campaign.isprintable()
        or not storable_text(campaign)
    ):
        raise ConfigurationError(
            f"campaign must be printable text of 1 to {MAX_CAMPAIGN_NAME_LENGTH}"
            f" characters, not {str(campaign)[:80]!r}"
        )
    for name, flag in (("new_run", new_run), ("upgrade", upgrade)):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{name} must be True or False, not {flag!r}")
    if resumed_from is not None and (
        isinstance(resumed_from, bool)
        or not isinstance(resumed_from, int)
        or not 1 <= resumed_from <= MAX_ROW_ID
    ):
        raise ConfigurationError(
            f"resumed_from must be a workflow snapshot id, not {resumed_from!r}"
        )
    if (
        isinstance(writer_timeout, bool)
        or not isinstance(writer_timeout, (int, float))
        or not math.isfinite(writer_timeout)
        or writer_timeout <= 0
    ):
        raise ConfigurationError(
            "writer_timeout must be a positive number of seconds,"
            f" not {writer_timeout!r}"
        )


#: First keys of snapreg's PostgreSQL advisory locks (their two-key form). A run's
#: writer holds (RUN_WRITER_LOCK_SPACE, run) on its own database session for as long
#: as it lives; openers of a campaign take turns on (CAMPAIGN_LOCK_SPACE, campaign).
RUN_WRITER_LOCK_SPACE = 0x736E7072
CAMPAIGN_LOCK_SPACE = 0x736E7063


def writer_lock_key(run_id: int) -> tuple[int, int]:
    """The PostgreSQL advisory lock that a run's writer holds while it lives."""
    return RUN_WRITER_LOCK_SPACE, run_id % 2**31


def _campaign_lock_key(campaign: str) -> tuple[int, int]:
    # crc32 is stable across processes and versions; Python's hash() is not
    return CAMPAIGN_LOCK_SPACE, zlib.crc32(campaign.encode("utf-8")) - 2**31


class database_now(FunctionElement[datetime]):  # noqa: N801 - a SQL function
    """The database's clock, in UTC.

    Every lease time is written and judged by this one clock: writers on hosts
    whose clocks disagree then agree on how old a heartbeat is. (SQLite runs in
    each process, on the one machine that holds the file: its clock is that
    machine's.)
    """

    type = schema.UtcDateTime()
    inherit_cache = True


@compiles(database_now)
def _database_now(element: database_now, compiler: Any, **kwargs: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(database_now, "sqlite")
def _database_now_sqlite(element: database_now, compiler: Any, **kwargs: Any) -> str:
    # the text SQLAlchemy stores SQLite datetimes as, to the millisecond
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


_RENEW = (
    update(statements.RUN)
    .where(
        statements.RUN.c.id == bindparam("run_id"),
        statements.RUN.c.writer_token == bindparam("token"),
    )
    .values(writer_heartbeat_at=database_now())
)

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:space, :key)")

# the server process whose session holds a lock; the two-key form of an
# advisory lock shows its keys as classid and objid, with objsubid 2
_LOCK_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database"
    " WHERE datname = current_database())"
    " AND classid::bigint = :space AND objid::bigint = :key AND objsubid = 2"
)


@dataclass(frozen=True)
class Writer:
    """Who holds the right to write a run, as its lease row says.

    Attributes:
        run: The run's number.
        host: The writer's host.
        pid: The writer's process id on that host.
        since: When it took the run (the database's clock).
        heartbeat: Its last sign of life (the database's clock).
    """

    run: int
    host: str | None
    pid: int | None
    since: datetime | None
    heartbeat: datetime | None

    def describe(self) -> str:
        """``pid P on HOST since ... (last heartbeat ...)``."""
        return (
            f"pid {self.pid} on {self.host} since {_format_time(self.since)}"
            f" (last heartbeat {_format_time(self.heartbeat)})"
        )


@dataclass(frozen=True)
class WriterLease:
    """This process's claim on a run: who it is, and how long a silence may last.

    On PostgreSQL the claim is an advisory lock held by the writer's own database
    session (the connection it writes on): the server drops it when that session
    ends, whether the process exited, crashed or lost its connection, and never
    while it lives, however long it was silent. On SQLite, which has no sessions,
    a holder is gone when its process is (same host) or when its heartbeat is
    older than ``timeout`` by the database's clock. Either way every write
    transaction first checks that the lease still holds this token, and a
    heartbeat renews this token's lease only: a registry that was taken over
    writes nothing.

    Attributes:
        host: This machine's name.
        pid: This process's id.
        token: Random, unique to one registry.
        timeout: SQLite: seconds without a heartbeat after which another
            registry may take the run over.
    """

    host: str
    pid: int
    token: str
    timeout: float

    def acquire(self, session: Session, run: schema.RunRow, campaign: str) -> None:
        """Take the run, unless another writer that is still there has it.

        Called in the transaction that opens the run, on the connection the
        registry goes on writing with (it keeps the lock on PostgreSQL).

        Raises:
            WriterConflictError: naming the holder (host, pid, since when).
        """
        connection = session.connection()
        held_by_other = run.writer_token is not None and run.writer_token != self.token
        if connection.dialect.name == "postgresql":
            if not _try_lock(connection, run.id):
                raise _conflict(
                    connection, run, campaign, "only one registry may write a run."
                )
            gone = "its database session is gone" if held_by_other else None
        elif held_by_other:
            gone = _why_gone(connection, run, self.host, self.timeout)
            if gone is None:
                raise _conflict(
                    connection,
                    run,
                    campaign,
                    "only one registry may write a run. It is taken over"
                    f" {self.timeout:g} s after its last heartbeat.",
                )
        else:
            gone = None
        if gone is not None:
            _logger.warning(
                "Taking over run %d of campaign %r from pid %s on %s (%s)",
                run.number,
                campaign,
                run.writer_pid,
                run.writer_host,
                gone,
            )
        session.execute(
            update(schema.RunRow)
            .where(schema.RunRow.id == run.id)
            .values(
                writer_host=self.host,
                writer_pid=self.pid,
                writer_token=self.token,
                writer_since=database_now(),
                writer_heartbeat_at=database_now(),
            ),
            execution_options={"synchronize_session": False},
        )

    def hold(self, connection: Connection, run_id: int, description: str) -> None:
        """Take the run's lock again on a new connection (PostgreSQL).

        The session that held it ended (a server restart, a dropped connection):
        the lock went with it, and another registry may have taken the run since.

        Raises:
            WriterConflictError: another registry holds the lock now.
        """
        if connection.dialect.name == "postgresql" and not _try_lock(
            connection, run_id
        ):
            raise WriterConflictError(
                f"{description} was taken over by another registry while this"
                " one's database session was lost; this one stops writing"
            )

    def renew(self, connection: Connection, run_id: int, description: str) -> None:
        """Record a heartbeat, by the database's clock.

        Only this token's lease is renewed: a registry whose run was taken over
        learns it here too.

        Raises:
            WriterConflictError: another registry took the run over.
        """
        renewed = connection.execute(_RENEW, {"run_id": run_id, "token": self.token})
        if renewed.rowcount != 1:
            raise WriterConflictError(
                f"{description} was taken over by another registry; this one stops"
                " writing"
            )

    def release(self, session: Session, run_id: int) -> None:
        """Give the run up, if it is still ours.

        On PostgreSQL the lock goes with the writer's session, which the
        registry ends after this.
        """
        session.execute(
            update(schema.RunRow)
            .where(schema.RunRow.id == run_id, schema.RunRow.writer_token == self.token)
            .values(
                writer_token=None,
                writer_host=None,
                writer_pid=None,
                writer_since=None,
                writer_heartbeat_at=None,
            )
        )


def live_writer(session: Session, run: schema.RunRow, timeout: float) -> Writer | None:
    """Who still writes a run: the holder a new registry would be refused by.

    PostgreSQL: the holder whose session holds the run's lock. SQLite: the holder
    whose process lives (same host) and whose heartbeat is at most ``timeout``
    seconds old by the database's clock.
    """
    if run.writer_token is None:
        return None
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        if _lock_holder(connection, run.id) is None:
            return None
    elif _why_gone(connection, run, host_and_pid()[0], timeout) is not None:
        return None
    return _writer_of(run)


def newest_run_writer(
    session: Session, campaign: str, timeout: float = DEFAULT_WRITER_TIMEOUT
) -> Writer | None:
    """Who still writes the campaign's newest run, if anyone (see live_writer)."""
    campaign_id = session.scalar(
        select(schema.CampaignRow.id).where(schema.CampaignRow.name == campaign)
    )
    if campaign_id is None:
        return None
    run = queries.latest_run(session, campaign_id)
    return None if run is None else live_writer(session, run, timeout)


def _writer_of(run: schema.RunRow) -> Writer:
    return Writer(
        run.number,
        run.writer_host,
        run.writer_pid,
        run.writer_since,
        run.writer_heartbeat_at,
    )


def _try_lock(connection: Connection, run_id: int) -> bool:
    space, key = writer_lock_key(run_id)
    return bool(connection.execute(_TRY_LOCK, {"space": space, "key": key}).scalar())


def _lock_holder(connection: Connection, run_id: int) -> int | None:
    space, key = writer_lock_key(run_id)
    found = connection.execute(_LOCK_HOLDER, {"space": space, "key": key}).first()
    return None if found is None else int(found.pid)


def _why_gone(
    connection: Connection, run: schema.RunRow, host: str, timeout: float
) -> str | None:
    """SQLite: why the run's holder may be taken over; None while it is there."""
    if run.writer_host == host and not process_alive(run.writer_pid):
        return "process gone"
    heartbeat = run.writer_heartbeat_at or run.writer_since
    if heartbeat is None:
        return "no heartbeat"
    now = connection.execute(select(database_now())).scalar_one()
    if now - heartbeat > timedelta(seconds=timeout):
        return "heartbeat too old"
    return None


def _conflict(
    connection: Connection, run: schema.RunRow, campaign: str, rule: str
) -> WriterConflictError:
    """The error for an opener that may not write the run, naming who does."""
    where = f"run {run.number} of campaign {campaign!r}"
    if run.writer_token is None:
        return WriterConflictError(
            f"{where} is being opened or closed by another registry at this"
            " moment; try again"
        )
    message = f"{where} is being written by {_writer_of(run).describe()}; {rule}"
    if connection.dialect.name == "postgresql":
        backend = _lock_holder(connection, run.id)
        session = "" if backend is None else f" (server process {backend})"
        message += (
            f" Its database session{session} holds the run until it ends: when"
            " that process exits or is killed, or its connection is lost."
        )
    return WriterConflictError(message)


@dataclass(frozen=True)
class RunSetup:
    """What a registry brings to the run it opens."""

    campaign: str
    topology: Topology
    configuration_text: str
    folder: Path | None
    lease: WriterLease


def open_run(
    session: Session, setup: RunSetup, new_run: bool, resumed_from: int | None
) -> tuple[int, int, int]:
    """Continue the campaign's latest run, or create a new one, and take it.

    Returns:
        The campaign's id, the run's id and its number.

    Raises:
        TopologyMismatchError: continuing a run made with another model.
        NotFoundError: ``resumed_from`` is not a workflow snapshot of the campaign.
        WriterConflictError: another live registry writes the run.
    """
    _openings_take_turns(session, setup.campaign)
    campaign = session.scalars(
        select(schema.CampaignRow).where(schema.CampaignRow.name == setup.campaign)
    ).one_or_none()
    if campaign is None:
        campaign = schema.CampaignRow(name=setup.campaign)
        session.add(campaign)
        session.flush()
    run = queries.latest_run(session, campaign.id)
    if run is not None and run.writer_token == setup.lease.token:
        # a retry after a commit whose answer was lost: the run is ours already,
        # but the lock may have gone with the connection
        setup.lease.acquire(session, run, setup.campaign)
        return campaign.id, run.id, run.number
    signature = setup.topology.signature()
    folder = None if setup.folder is None else str(setup.folder.resolve())
    # Another snapshot folder beside the last run's, which is still there, is
    # another manager start (MUSCLE3 gives each its own run directory), whose
    # instances start afresh: a new run, even when nothing can pass new_run
    # (MUSCLE3's manager building the registry itself). A folder that replaces one
    # that is gone is the same campaign moved: it goes on.
    another_start = (
        folder is not None
        and run is not None
        and run.snapshot_folder not in (None, folder)
        and os.path.isdir(run.snapshot_folder)
    )
    if run is None or new_run or another_start:
        if resumed_from is not None:
            _check_resumed_from(session, setup.campaign, campaign.id, resumed_from)
        run = _create_run(
            session,
            setup,
            campaign.id,
            1 if run is None else run.number + 1,
            resumed_from,
        )
        setup.lease.acquire(session, run, setup.campaign)
        return campaign.id, run.id, run.number
    if (
        resumed_from is not None
        and resumed_from != run.resumed_from_workflow_snapshot_id
    ):
        raise ConfigurationError(
            "resumed_from is only for a new run; pass new_run=True"
        )
    if run.topology != signature:
        raise TopologyMismatchError(
            f"campaign {setup.campaign!r} run {run.number} was made with a model"
            " whose components or conduits differ from this configuration; start a"
            " new run (new_run=True) or use another campaign"
        )
    setup.lease.acquire(session, run, setup.campaign)
    if folder is not None and run.snapshot_folder != folder:
        run.snapshot_folder = folder
    return campaign.id, run.id, run.number


def open_run_on(
    connection: Connection, setup: RunSetup, new_run: bool, resumed_from: int | None
) -> tuple[int, int, int]:
    """:func:`open_run` in the transaction under way on a writer's connection.

    The registry opens its run on the connection it keeps for writing: on
    PostgreSQL that session then holds the run's lock for the registry's life.
    """
    with Session(bind=connection, expire_on_commit=False) as session:
        opened = open_run(session, setup, new_run, resumed_from)
        session.flush()
        return opened


def _openings_take_turns(session: Session, campaign: str) -> None:
    """Serialise the transactions that open runs of one campaign.

    Processes that open a campaign at the same instant then each see what the
    one before them did: the campaign it created, the run it numbered, the run it
    took. SQLite: the writer's ``BEGIN IMMEDIATE`` already does this.
    """
    if session.connection().dialect.name == "postgresql":
        space, key = _campaign_lock_key(campaign)
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": space, "key": key},
        )


def _check_resumed_from(
    session: Session, campaign: str, campaign_id: int, workflow_snapshot_id: int
) -> None:
    found = session.execute(
        select(schema.WorkflowSnapshotRow.id)
        .join(schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id)
        .where(
            schema.WorkflowSnapshotRow.id == workflow_snapshot_id,
            schema.RunRow.campaign_id == campaign_id,
        )
    ).first()
    if found is None:
        raise NotFoundError(
            f"campaign {campaign!r} has no workflow snapshot {workflow_snapshot_id}"
            " to resume from"
        )


def _create_run(
    session: Session,
    setup: RunSetup,
    campaign_id: int,
    number: int,
    resumed_from: int | None,
) -> schema.RunRow:
    """A new run with its restart nodes, their edges and its topology rows."""
    now = datetime.now(timezone.utc)
    topology = setup.topology
    run = schema.RunRow(
        campaign_id=campaign_id,
        number=number,
        model_name=topology.model_name,
        topology=topology.signature(),
        configuration=setup.configuration_text,
        snapshot_folder=str(setup.folder.resolve()) if setup.folder else None,
        started_at=now,
        resumed_from_workflow_snapshot_id=resumed_from,
    )
    session.add(run)
    session.flush()
    connection = session.connection()
    # Restart nodes first, as MUSCLE3 does: every instance may start afresh.
    graph = ActiveGraph(topology)
    restart = restart_metadata()
    values = codecs.node_row_values(restart)
    ids = statements.allocate_ids(connection, statements.NODE, len(topology.instances))
    connection.execute(
        insert(statements.NODE),
        [
            {
                "id": node_id,
                "run_id": run.id,
                "instance": instance,
                "num": 1,
                "is_restart": True,
                "registered_at": now,
                **values,
            }
            for node_id, instance in zip(ids, topology.instances, strict=True)
        ],
    )
    edges: list[dict[str, int]] = []
    for node_id, instance in zip(ids, topology.instances, strict=True):
        node = graph.new_node(node_id, instance, restart, True)
        edges.extend(statements.edge_rows(node, graph.add(node)))
    if edges:
        connection.execute(statements.INSERT_EDGE, edges)
    _write_topology_rows(connection, topology, run.id)
    return run


def _write_topology_rows(
    connection: Connection, topology: Topology, run_id: int
) -> None:
    """The per-run rows the SQL views use (docs/schema.md, migration 0002).

    The peers of every instance, and every conduit between two peers with the port
    and slot of each side whose counts must agree (NULL: every slot), from the same
    compiled rules the registry checks.
    """
    peer_rows = [
        {"run_id": run_id, "instance": instance, "peer_instance": peer}
        for instance in topology.instances
        for peer in sorted(topology.peers(instance))
    ]
    if peer_rows:
        connection.execute(insert(statements.INSTANCE_PEER), peer_rows)
    conduit_rows = [
        {
            "run_id": run_id,
            "sender_instance": sender,
            "receiver_instance": receiver,
            "conduit": f"{split_instance(sender)[0]}.{rule.own_port} ->"
            f" {split_instance(receiver)[0]}.{rule.peer_port}",
            "sending_port": rule.own_port,
            "sending_slot": rule.own_slot,
            "receiving_port": rule.peer_port,
            "receiving_slot": rule.peer_slot,
        }
        for sender in topology.instances
        for receiver in sorted(topology.peers(sender))
        for rule in topology.rules(sender, receiver)
        if rule.is_sending
    ]
    if conduit_rows:
        connection.execute(insert(statements.INSTANCE_CONDUIT), conduit_rows)


def _format_time(moment: datetime | None) -> str:
    if moment is None:
        return "an unknown time"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
