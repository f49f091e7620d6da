"""Transactions and errors: retries of transient failures, the one error mapper.

Every transaction of a writer or a reader runs through :func:`run_transaction` (an
ORM session) or :func:`run_in_connection` (a bare connection, the registry's hot
path): what is worth retrying (:func:`is_transient`: a lock, a conflict, a lost
connection) is tried again, and everything else becomes snapreg's error
(:func:`storage_error`). :func:`host_and_pid` and :func:`process_alive` name the
process that holds a writer's transactions.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from snapreg.errors import (
    DatabaseRefusedError,
    SnapregError,
    StorageFullError,
    StorageUnavailableError,
    TransientDatabaseError,
)
from snapreg.storage.engines import begin_writing, describe_url

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# SQLSTATEs that mean "try again": serialization failure, deadlock, lock timeout,
# and the connection-exception class (08xxx) and admin shutdown (57P01..57P03).
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}

# What the driver says (without a SQLSTATE) when a connection to the server cannot
# be made or was lost: a server restarting, a network hiccup. Worth retrying, unlike
# a wrong password or a missing database, which also come without a SQLSTATE.
_CONNECTION_TROUBLE = (
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "consuming input failed",
    "sending query failed",
    "could not receive data",
    "could not send data",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "ssl syscall error",
    "eof detected",
)

#: How many times run_transaction tries a transaction that fails transiently. The
#: pauses between attempts double from 50 ms up to 2 s, about 5 s in all: enough
#: to ride out a PostgreSQL restart or a dropped connection, not so long that a
#: persistent failure goes unreported.
TRANSACTION_ATTEMPTS = 8


def translating_errors(
    url: str | URL, action: Callable[[], _T], *, doing: str = "open"
) -> _T:
    """Run ``action``, which opens or inspects a database; map what stops it.

    An operational error (an unreachable server, a wrong password, a missing
    database) or a file that is no SQLite database becomes snapreg's error
    (:func:`storage_error`). Any other driver error is raised as it is: it is a
    bug, not to be hidden as "unavailable".

    Args:
        url: The database, for the message.
        action: What to run.
        doing: What it does, for the message: ``open`` or ``read``.
    """
    try:
        return action()
    except DatabaseError as err:
        if isinstance(err, OperationalError) or is_unreadable_file(err):
            raise storage_error(url, err, doing=doing) from err
        raise
    except sqlite3.OperationalError as err:
        # the driver's own, from a pragma sent past SQLAlchemy (engines.use_wal)
        raise storage_error(url, err, doing=doing) from err


def is_unreadable_file(err: DatabaseError) -> bool:
    """Whether SQLite says the file is no database, or a damaged one."""
    detail = str(err.orig)
    return "file is not a database" in detail or "malformed" in detail


#: SQLite's words for a full disk, and PostgreSQL's SQLSTATEs (class 53:
#: insufficient resources; 53100 is disk_full).
_FULL_DISK = ("database or disk is full", "disk is full")
_OUT_OF_RESOURCES_CLASS = "53"


def storage_error(
    url: str | URL | None, err: BaseException, *, doing: str | None = None
) -> SnapregError:
    """snapreg's error for a driver error: the one mapper of writers and readers.

    The original error stays attached as the cause (``raise ... from err``), so
    that nothing is hidden from whoever debugs it.

    Args:
        url: The database (its password is hidden in the message); None when
            the caller does not know it.
        err: SQLAlchemy's error, or the driver's own.
        doing: What failed, when it is opening or reading a database (``open``,
            ``read``): an operational error then means the database cannot be
            reached or used, and the message starts with "cannot open
            database ...". None for a transaction (a writer's, or a query of
            someone's): an operational error is then the database refusing it.

    Returns:
        :class:`StorageFullError` for a full disk; :class:`StorageUnavailableError`
        for a database out of resources, a file that is no (or a damaged) SQLite
        database, one that cannot be written, or (when opening or reading) one
        that cannot be reached; :class:`TransientDatabaseError` for a lock,
        conflict or lost connection (when retrying is not, or no more, an
        option); :class:`DatabaseRefusedError` for anything else.
    """
    cause = getattr(err, "orig", None) or err
    where = "" if url is None else f" {describe_url(url)}"
    subject = f"cannot {doing} database{where}" if doing else f"database{where}"
    sqlstate = getattr(cause, "sqlstate", None) or ""
    detail = " ".join(str(cause).split()) or repr(cause)
    lowered = detail.lower()
    if sqlstate == "53100" or any(sign in lowered for sign in _FULL_DISK):
        return StorageFullError(f"{subject}: the disk is full ({detail})")
    if sqlstate.startswith(_OUT_OF_RESOURCES_CLASS):
        return StorageUnavailableError(f"{subject}: out of resources ({detail})")
    if "file is not a database" in lowered:
        return StorageUnavailableError(
            f"{subject}: the file is not a SQLite database (or its header is"
            " damaged); snapreg leaves it untouched"
        )
    if "malformed" in lowered:
        return StorageUnavailableError(
            f"{subject}: the SQLite database is damaged ({detail}); snapreg leaves"
            " it untouched"
        )
    if is_transient(err):
        return TransientDatabaseError(f"{subject}: {detail}")
    if "readonly" in lowered or "read-only" in lowered or "disk i/o error" in lowered:
        return StorageUnavailableError(f"{subject}: it cannot be written ({detail})")
    if doing is None:
        return DatabaseRefusedError(f"{subject} refused the transaction: {detail}")
    if isinstance(err, OperationalError | sqlite3.OperationalError):
        return StorageUnavailableError(f"{subject}: {detail}")
    return DatabaseRefusedError(f"{subject}: {detail}")


def is_transient(err: BaseException) -> bool:
    """Whether a database error is worth retrying: locks, conflicts, lost links."""
    if isinstance(err, sqlite3.OperationalError):
        # raised as is by the BEGIN IMMEDIATE that engines._configure_sqlite sends
        message = str(err).lower()
        return "locked" in message or "busy" in message
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    sqlstate = getattr(err.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if isinstance(err, OperationalError):
        message = str(err.orig).lower()
        if any(sign in message for sign in _CONNECTION_TROUBLE):
            return True
        return "locked" in message or "busy" in message
    return False


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = Session(engine, expire_on_commit=False)
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def run_transaction(
    engine: Engine,
    work: Callable[[Session], _T],
    *,
    attempts: int | None = None,
    on_retry: Callable[[], None] | None = None,
    doing: str | None = None,
) -> _T:
    """Run ``work`` in one ORM session transaction, retrying transient failures.

    Args:
        engine: Where to run it.
        work: Does the work in the session it is given; must be safe to repeat
            (everything it did is rolled back before a retry).
        attempts: How many times to try before giving up; default
            :data:`TRANSACTION_ATTEMPTS` (read at each call, so tests can lower it).
        on_retry: Called after a failed attempt, before the next one, to reset
            state that ``work`` built in memory.
        doing: ``read`` for a reader's transaction (see :func:`storage_error`).

    Raises:
        TransientDatabaseError: the failure persisted through every attempt.
        SnapregError: any other failure, mapped by :func:`storage_error`.
    """

    def attempt() -> _T:
        with unit_of_work(engine) as session:
            return work(session)

    return _with_retries(engine, attempt, attempts, on_retry, doing)


class HeldConnection:
    """A writer's own connection, kept between its transactions, which take the
    write lock (see :func:`~snapreg.storage.engines.begin_writing`).

    Taking a connection from the pool and giving it back around every
    registration costs about as much as the registration's statements. A
    registry writes from one thread at a time, so it keeps one connection; after
    any error in a transaction the connection is closed, and the next
    transaction takes a fresh one from the pool.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        session_locks: bool = False,
        setup: Callable[[Connection], None] | None = None,
    ) -> None:
        """Keep a connection of ``engine``'s, taken at the first transaction.

        Args:
            engine: Where the connection comes from.
            session_locks: The connection's session holds locks (PostgreSQL
                advisory locks) or settings that must end with it: a connection
                given up is closed for good instead of going back to the pool.
            setup: Called with each new connection, the first included, in its
                first transaction, before anything else: to set up the session.
        """
        self.engine = engine
        self._connection: Connection | None = None
        self._session_locks = session_locks
        self._setup = setup
        #: Called with each new connection but the first, in its first
        #: transaction, before the work: to take the session's locks again.
        self.on_reconnect: Callable[[Connection], None] | None = None

    @property
    def url(self) -> URL:
        return self.engine.url

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on the kept connection: committed, or rolled back."""
        connection = self._connection
        new = connection is None or connection.closed or connection.invalidated
        if new:
            connection = self._connection = self.engine.connect()
        assert connection is not None
        try:
            begin_writing(connection)
            with connection.begin():
                if new and self._setup is not None:
                    self._setup(connection)
                if new and self.on_reconnect is not None:
                    self.on_reconnect(connection)
                yield connection
        except BaseException:
            self.close()
            raise

    def connect(self) -> Connection:
        """A connection of the pool's, for a question outside the transactions."""
        return self.engine.connect()

    def close(self) -> None:
        """Give the connection back; the next transaction takes another."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                if self._session_locks:
                    # its locks go with the session, not into the pool
                    connection.invalidate()
                connection.close()
            except Exception:  # a broken connection: the pool discards it
                _logger.debug("Closing a writer connection failed", exc_info=True)


def run_in_connection(
    engine: Engine | HeldConnection,
    work: Callable[[Connection], _T],
    *,
    attempts: int | None = None,
    on_retry: Callable[[], None] | None = None,
    landed: Callable[[Connection, _T], bool] | None = None,
) -> _T:
    """Like :func:`run_transaction`, on a bare Connection.

    The registry's hot path (one registration) uses Core statements on the ORM's
    tables: the ORM's unit of work and bulk-insert machinery roughly double the
    cost of a registration and buy nothing for plain inserts.

    Args:
        engine: Where to run it.
        work: Does the work on the connection it is given.
        attempts: How many times to try; default :data:`TRANSACTION_ATTEMPTS`.
        on_retry: Called after a failed attempt, before the next one.
        landed: Tells whether a transaction whose work was done, but whose
            COMMIT failed, committed after all (the server may commit and the
            answer be lost with the connection). When given, a retry first asks
            it, and returns the earlier result instead of doing the work twice.
    """
    finished: list[_T] = []  # work done, outcome of its COMMIT unknown

    def attempt() -> _T:
        if finished and landed is not None:
            with engine.connect() as connection:
                committed = landed(connection, finished[-1])
            if committed:
                _logger.warning("The commit whose answer was lost had landed")
                return finished[-1]
            finished.clear()
        with engine.begin() as connection:
            result = work(connection)
            finished.append(result)
        return result

    return _with_retries(engine, attempt, attempts, on_retry)


def _with_retries(
    engine: Engine | HeldConnection,
    attempt: Callable[[], _T],
    attempts: int | None,
    on_retry: Callable[[], None] | None,
    doing: str | None = None,
) -> _T:
    attempts = TRANSACTION_ATTEMPTS if attempts is None else attempts
    delay = 0.05
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except (DBAPIError, sqlite3.Error) as err:
            if not is_transient(err):
                raise storage_error(engine.url, err, doing=doing) from err
            cause = getattr(err, "orig", err)
            if number == attempts:
                raise TransientDatabaseError(
                    f"database {describe_url(engine.url)} failed {attempts} times in"
                    f" a row: {cause}"
                ) from err
            _logger.warning(
                "Transient database error (attempt %d of %d), retrying: %s",
                number,
                attempts,
                cause,
            )
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def host_and_pid() -> tuple[str, int]:
    """This process's host name and pid, to name a writer."""
    return os.uname().nodename, os.getpid()


def process_alive(pid: int | None) -> bool:
    """Whether a process with this pid runs on this host."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
