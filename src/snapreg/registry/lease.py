"""The right to write a run: the writer lease, its locks, and the clock it is judged by.

The lease lives on the run row: holder's host, pid, random token and a heartbeat
written by the database's clock. On PostgreSQL the holder's own database session
also holds an advisory lock on the run for the holder's whole life: the run is
taken over exactly when that session has ended. On SQLite a holder is gone when
its process is, or when its heartbeat is older than the timeout. The first
statement of every write transaction of a registry checks that the lease still
holds its token (:func:`snapreg.storage.statements.allocate_many`), and stops it if
not.

Time enters only through a :class:`Clock`: the heartbeat's schedule and the age of
a holder's heartbeat. Tests pass one they advance instead of sleeping.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from snapreg.errors import WriterConflictError
from snapreg.storage import queries, schema, statements
from snapreg.storage.locks import (
    CAMPAIGN_LOCK_SPACE,
    writer_lock_holder,
    writer_lock_key,
)
from snapreg.storage.transactions import host_and_pid, process_alive

_logger = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a SQLite writer may be taken over.
DEFAULT_WRITER_TIMEOUT = 60.0
#: The longest pause between two heartbeats, whatever the timeout.
MAX_HEARTBEAT_INTERVAL = 15.0


class Clock(Protocol):
    """Where the lease reads the time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: when a heartbeat is due."""
        ...

    def database_now(self, connection: Connection) -> datetime:
        """The database's time, UTC: how old a holder's heartbeat is."""
        ...


class SystemClock:
    """The real clocks: this process's monotonic clock and the database's."""

    def monotonic(self) -> float:
        return time.monotonic()

    def database_now(self, connection: Connection) -> datetime:
        return connection.execute(select(database_now())).scalar_one()


SYSTEM_CLOCK = SystemClock()


class Heartbeat:
    """When the writer renews its lease: every quarter of the timeout, at most 15 s.

    A registration's transaction renews it when due; the registry's worker renews
    it in between.
    """

    def __init__(self, timeout: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.interval = min(timeout / 4, MAX_HEARTBEAT_INTERVAL)
        self._clock = clock
        self._last = clock.monotonic()

    def due(self) -> bool:
        """Whether the lease should be renewed now."""
        return self._clock.monotonic() - self._last >= self.interval

    def seconds_until_due(self) -> float:
        """How long the worker may sleep before the next renewal (0 if due)."""
        return max(self._last + self.interval - self._clock.monotonic(), 0.0)

    def renewed(self) -> None:
        """Note a renewal that committed (or is in the transaction under way)."""
        self._last = self._clock.monotonic()


def campaign_lock_key(campaign: str) -> tuple[int, int]:
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
        clock: What this opener judges a holder's heartbeat by.
    """

    host: str
    pid: int
    token: str
    timeout: float
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)

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
            timeout = holder_timeout(run, self.timeout)
            gone = _why_gone(connection, run, self.host, timeout, self.clock)
            if gone is None:
                raise _conflict(
                    connection,
                    run,
                    campaign,
                    "only one registry may write a run. It is taken over"
                    f" {timeout:g} s after its last heartbeat.",
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
                writer_timeout=self.timeout,
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
                writer_timeout=None,
            )
        )


def live_writer(session: Session, run: schema.RunRow) -> Writer | None:
    """Who still writes a run, as readers judge it.

    PostgreSQL: the holder whose session holds the run's lock. SQLite: the holder
    whose process lives (same host) and whose heartbeat is no older than the
    timeout it recorded (:func:`holder_timeout`), by the database's clock.
    """
    if run.writer_token is None:
        return None
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        if writer_lock_holder(connection, run.id) is None:
            return None
    elif _why_gone(connection, run, host_and_pid()[0], holder_timeout(run)) is not None:
        return None
    return _writer_of(run)


def holder_timeout(run: schema.RunRow, timeout: float | None = None) -> float:
    """SQLite: how long the run's holder may be silent before it counts as gone.

    The holder heartbeats on the schedule of the timeout it recorded when it took
    the run. An opener with its own ``timeout`` waits the longer of the two: a
    shorter one would take the holder over between two of its beats. A reader
    (``timeout`` None) goes by the recorded one. A lease taken before snapreg
    recorded timeouts is judged by ``timeout``, or the default.
    """
    recorded = run.writer_timeout
    if recorded is None:
        return DEFAULT_WRITER_TIMEOUT if timeout is None else timeout
    return recorded if timeout is None else max(timeout, recorded)


def newest_run_writer(session: Session, campaign: str) -> Writer | None:
    """Who still writes the campaign's newest run, if anyone (see live_writer)."""
    campaign_id = session.scalar(
        select(schema.CampaignRow.id).where(schema.CampaignRow.name == campaign)
    )
    if campaign_id is None:
        return None
    run = queries.latest_run(session, campaign_id)
    return None if run is None else live_writer(session, run)


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


def _why_gone(
    connection: Connection,
    run: schema.RunRow,
    host: str,
    timeout: float,
    clock: Clock = SYSTEM_CLOCK,
) -> str | None:
    """SQLite: why the run's holder may be taken over; None while it is there."""
    if run.writer_host == host and not process_alive(run.writer_pid):
        return "process gone"
    heartbeat = run.writer_heartbeat_at or run.writer_since
    if heartbeat is None:
        return "no heartbeat"
    now = clock.database_now(connection)
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
        backend = writer_lock_holder(connection, run.id)
        session = "" if backend is None else f" (server process {backend})"
        message += (
            f" Its database session{session} holds the run until it ends: when"
            " that process exits or is killed, or its connection is lost."
        )
    return WriterConflictError(message)


def _format_time(moment: datetime | None) -> str:
    if moment is None:
        return "an unknown time"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
