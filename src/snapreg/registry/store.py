"""The registry's hold on its database: engines, the writing connection, the lease.

A :class:`RunStore` opens the database, opens the run on the connection it keeps
for writing (on PostgreSQL that session holds the run's writer lock for the
registry's whole life), runs every write transaction on it with the lease checked
and renewed when due, and gives the run up at the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from snapreg.errors import StorageUnavailableError
from snapreg.registry.files import FileWriter
from snapreg.registry.lease import Clock, Heartbeat, WriterLease
from snapreg.registry.runs import RunSetup, open_run_on
from snapreg.rules.graph import ActiveGraph
from snapreg.storage import statements
from snapreg.storage.engines import (
    Durability,
    create_database_engine,
    is_memory_sqlite,
    writer,
)
from snapreg.storage.transactions import (
    HeldConnection,
    run_in_connection,
    run_transaction,
)
from snapreg.storage.versions import ensure_schema

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# The pauses between attempts to renew the lease while the database is unavailable.
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class OpenedRun:
    """The run a registry writes."""

    campaign: str
    campaign_id: int
    run_id: int
    number: int

    def describe(self) -> str:
        """``run N of campaign 'C'``."""
        return f"run {self.number} of campaign {self.campaign!r}"


class RunStore:
    """One registry's database: where it reads, writes, and holds its run."""

    def __init__(
        self,
        url: URL,
        *,
        durability: Durability,
        lease: WriterLease,
        clock: Clock,
    ) -> None:
        """Create the engines; nothing is opened until :meth:`open`."""
        self.url = url
        self.engine = create_database_engine(url, durability=durability)
        self.in_memory = is_memory_sqlite(url)
        self._write_engine = writer(self.engine)
        # the registration path's transactions, one at a time (under self.lock)
        self._writes = HeldConnection(
            self.engine,
            session_locks=url.get_backend_name() == "postgresql",
            setup=statements.plan_statements_once,
        )
        self._lease = lease
        self._heartbeat = Heartbeat(lease.timeout, clock)
        #: Guards the registry's graph and the processing of registrations.
        self.lock = threading.RLock()
        # In memory, every thread shares one connection: writes (acknowledgements
        # included) and reads take the graph's lock. Elsewhere the database orders
        # writers itself (a Python lock here was measured slower on SQLite too).
        self._write_lock: AbstractContextManager[Any] = (
            self.lock if self.in_memory else nullcontext()
        )
        self.run: OpenedRun | None = None
        self.run_writer: statements.RunWriter | None = None
        # notified when the lease need not be kept any more
        self._stop = threading.Condition()
        self._stopping = False

    @property
    def heartbeat(self) -> Heartbeat:
        """The lease's renewal schedule."""
        return self._heartbeat

    def open(
        self,
        setup: RunSetup,
        *,
        upgrade: bool,
        new_run: bool,
        resumed_from: int | None,
    ) -> tuple[OpenedRun, ActiveGraph | None]:
        """Check the schema, open (or create) the run and take its lease.

        Returns:
            The run, and for a run just created the active graph of its rows
            (None for a run continued: its graph is in the database).
        """
        ensure_schema(self.engine, upgrade=upgrade)
        campaign_id, run_id, number, graph = run_in_connection(
            self._writes,
            lambda connection: open_run_on(connection, setup, new_run, resumed_from),
        )
        run = OpenedRun(setup.campaign, campaign_id, run_id, number)
        self.run = run
        # every write transaction checks that the run is still ours
        self.run_writer = statements.RunWriter(
            run_id, self._lease.token, run.describe()
        )
        self._writes.on_reconnect = lambda connection: self._lease.hold(
            connection, run_id, run.describe()
        )
        self._heartbeat.renewed()
        return run, graph

    def write(
        self,
        work: Callable[[Connection], _T],
        landed: Callable[[Connection, _T], bool] | None = None,
    ) -> _T:
        """Run one write transaction on the writing connection, with retries.

        Args:
            work: The transaction's statements; it should start with
                :meth:`heartbeat_if_due` on its connection.
            landed: Tells, after a commit whose answer was lost, whether it
                committed (see :func:`~snapreg.storage.transactions.run_in_connection`).
        """
        with self._write_lock:
            return run_in_connection(self._writes, work, landed=landed)

    def read(self, work: Callable[[Session], _T]) -> _T:
        """Run a read-only unit of work."""
        if self.in_memory:
            with self.lock:
                return run_transaction(self.engine, work)
        return run_transaction(self.engine, work)

    def heartbeat_if_due(
        self, connection: Connection | None = None, *, force: bool = False
    ) -> None:
        """Renew the writer lease if due; fail if another process took the run over.

        Args:
            connection: The write transaction under way, or None for a
                transaction of its own.
            force: Renew even if not due.

        Raises:
            WriterConflictError: the run was taken over.
        """
        if not force and not self._heartbeat.due():
            return
        run = self.opened()

        def beat(work_connection: Connection) -> None:
            self._lease.renew(work_connection, run.run_id, run.describe())

        if connection is None:
            self.write(beat)
        else:
            beat(connection)
        self._heartbeat.renewed()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop_keeping` was called."""
        with self._stop:
            return self._stopping

    def keep_lease(self) -> None:
        """Renew the lease whenever it is due, until :meth:`stop_keeping`.

        Registrations renew it too, in their own transactions, when it is due. A
        database that is unavailable for a while is waited out, with growing
        pauses between attempts.

        Raises:
            WriterConflictError: the run was taken over.
        """
        backoff = 0.0
        while True:
            with self._stop:
                if not self._stopping:
                    self._stop.wait(
                        timeout=backoff or self._heartbeat.seconds_until_due()
                    )
                if self._stopping:
                    return
            try:
                with self.lock:
                    self.heartbeat_if_due(force=bool(backoff))
                backoff = 0.0
            except StorageUnavailableError as err:  # a lock, a full disk: wait
                backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)
                _logger.warning(
                    "Could not renew the writer lease; retrying in %.1f s: %s",
                    backoff,
                    err,
                )

    def stop_keeping(self) -> None:
        """End :meth:`keep_lease` (at once, or before it next waits)."""
        with self._stop:
            self._stopping = True
            self._stop.notify_all()

    def finish(self, files: FileWriter) -> None:
        """End the run: last file writes, lease released, database let go."""
        try:
            with self.lock:
                files.retry()
                self.release()
        except Exception:  # release is best effort; the lease times out anyway
            _logger.warning("Could not release the run's writer lease", exc_info=True)
        with self.lock:
            self.checkpoint()
            # an in-memory database lives as long as its engine: keep its rows
            self.close(keep_memory=True)

    def row_exists(self, connection: Connection, table: Table, row_id: int) -> bool:
        """Whether this run has a row with that id in the table."""
        found = connection.execute(
            select(table.c.id).where(
                table.c.id == row_id, table.c.run_id == self.opened().run_id
            )
        ).first()
        return found is not None

    def release(self) -> None:
        """Give the run up: it reads as ended, and may be opened by anyone."""
        run = self.opened()
        run_transaction(
            self._write_engine, lambda session: self._lease.release(session, run.run_id)
        )

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log back into the database file."""
        if self.url.get_backend_name() != "sqlite" or self.in_memory:
            return
        try:
            with self.engine.connect() as connection:
                # outside any transaction: the driver's own connection, as SQLAlchemy
                # would begin one first
                driver = connection.connection.driver_connection
                assert driver is not None
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # a reader may hold the log; it is folded back later
            _logger.debug("Could not checkpoint the write-ahead log", exc_info=True)

    def close(self, *, keep_memory: bool) -> None:
        """Let the database go.

        Args:
            keep_memory: Keep an in-memory database (its engine) alive, so that
                the registry's rows can still be read.
        """
        self._writes.close()
        if not (keep_memory and self.in_memory):
            self.engine.dispose()

    def opened(self) -> OpenedRun:
        if self.run is None:
            raise RuntimeError("the run is not open")
        return self.run
