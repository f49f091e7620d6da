"""How the registration path's statements reach the driver.

Two ways of sending that cost less than SQLAlchemy's ``Connection.execute``
while keeping what callers rely on from it (the engine's events, its error
types and its handling of a connection the server dropped): statements sent
without a result object (:func:`send`, :func:`send_many`, :func:`fetch`), and
PostgreSQL's pipeline mode for a block of them (:func:`pipelined`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


def send(connection: Connection, sql: str, parameters: Any) -> None:
    """Run one statement of the driver's SQL that returns no rows.

    ``exec_driver_sql`` builds an execution context and a result object around
    every statement. On the registration path that was about 74,000 machine
    instructions a statement, more than SQLite takes to run it: 16 % of a
    SQLite registration (counted with callgrind, see docs/performance.md). The
    statement goes instead through ``Connection._cursor_execute``, the method
    SQLAlchemy's dialects run their own statements with (sequences, defaults):
    the engine's ``before_cursor_execute`` and ``after_cursor_execute`` events
    see it, and a driver error is translated (and a connection the server
    dropped invalidated, ``handle_error`` called) exactly as for
    ``exec_driver_sql``; the dialect's ``do_execute`` events run too. What is left
    out is the result. Should SQLAlchemy log statements (``echo``), the full
    path runs instead, so that they are logged as always.
    """
    _run(connection, sql, parameters, many=False, rows=False)


def send_many(connection: Connection, sql: str, rows: Sequence[Any]) -> None:
    """:func:`send` once per row, as one executemany."""
    _run(connection, sql, rows, many=True, rows=False)


def fetch(connection: Connection, sql: str, parameters: Any) -> Sequence[Any]:
    """:func:`send` a statement that returns rows, and read them all."""
    return _run(connection, sql, parameters, many=False, rows=True) or []


def _run(
    connection: Connection, sql: str, parameters: Any, *, many: bool, rows: bool
) -> Sequence[Any] | None:
    """Run ``sql`` (see :func:`send`); its rows if ``rows``."""
    if connection._echo:
        result = connection.exec_driver_sql(sql, parameters if many else [parameters])
        return result.all() if rows else None
    try:
        cursor = connection.connection.cursor()
    except BaseException as err:  # as SQLAlchemy treats a cursor it cannot make
        connection._handle_dbapi_exception(err, sql, parameters, None, None)
    if many:
        _execute_many(connection, cursor, sql, parameters)
    else:
        connection._cursor_execute(cursor, sql, parameters)
    try:
        return cursor.fetchall() if rows else None
    finally:
        cursor.close()


def _execute_many(connection: Connection, cursor: Any, sql: str, rows: Any) -> None:
    """``Connection._cursor_execute`` for an executemany, which SQLAlchemy lacks."""
    try:
        watched = connection._has_events or connection.engine._has_events
        if watched:
            for listener in connection.dispatch.before_cursor_execute:
                sql, rows = listener(connection, cursor, sql, rows, None, True)
        dialect = connection.dialect
        for hook in dialect.dispatch.do_executemany if dialect._has_events else ():
            if hook(cursor, sql, rows, None):
                break
        else:
            dialect.do_executemany(cursor, sql, rows, None)
        if watched:
            connection.dispatch.after_cursor_execute(
                connection, cursor, sql, rows, None, True
            )
    except BaseException as err:
        connection._handle_dbapi_exception(err, sql, rows, cursor, None)


def pipelined(connection: Connection, count: int) -> AbstractContextManager[None]:
    """Send the block's ``count`` statements without waiting for each one's answer.

    On PostgreSQL the block runs in psycopg's pipeline mode: its statements go
    to the server one after the other and their answers are read together when
    the block ends, one wait for the server instead of one per statement. A
    batch of registrations writes six tables; sent one by one, those waits were
    a fifth of a PostgreSQL registration's time. Elsewhere (SQLite) the block
    simply runs, and so does a block of one statement: a pipeline saves no wait
    then, and entering and leaving it cost 7 % of the Python function calls of a
    registration that writes a single row.

    The block may only send statements that return no rows (SQLAlchemy reads a
    result's columns as soon as the statement is sent). An error the server
    reports for any of them is raised at the latest when the block ends, wrapped
    as SQLAlchemy wraps a statement's error (the same class, the driver's error
    as ``orig``), so that callers tell transient failures from others as they
    always do.
    """
    if count < 2 or connection.dialect.name != "postgresql":
        return _NOT_PIPELINED
    return _pipeline(connection)


# the block runs as it is (a context of no cost: registrations pass here)
_NOT_PIPELINED = nullcontext()


@contextmanager
def _pipeline(connection: Connection) -> Iterator[None]:
    """psycopg's pipeline mode for the block; its errors wrapped as SQLAlchemy's."""
    driver = connection.connection.driver_connection
    assert driver is not None  # a connection in a transaction
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.pipeline():
            yield
    except dbapi.Error as err:
        # as SQLAlchemy does for a statement's error: a connection the server
        # dropped is not rolled back but discarded
        dropped = connection.dialect.is_disconnect(err, driver, None)
        if dropped:
            connection.invalidate(err)
        raise DBAPIError.instance(
            None,
            None,
            err,
            dbapi.Error,
            connection_invalidated=dropped,
            dialect=connection.dialect,
        ) from err
