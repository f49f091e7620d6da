"""Plain SQL on a snapreg database, strictly read-only: what ``snapreg sql`` runs.

Users ask a campaign's history their own questions while the manager writes it;
the tables and views of ``docs/schema.md`` are the interface. Nothing a query
runs here can change the database, and that is enforced by the database itself
(:mod:`snapreg.storage.readonly`, the read-only layer of every reader), not
guessed from the text of the statement. What this module adds for statements
written by people:

* a statement that does not even start like a query (``DELETE``, ``ANALYZE``,
  ``LOCK``, ...) is refused before it is sent, only to name the problem early;
* on PostgreSQL a ``COMMIT`` or ``ROLLBACK`` that would end snapreg's read-only
  transaction is refused;
* the database's refusals and complaints become :class:`WriteRefusedError` and
  :class:`QueryError`, with words that say what happened.

Every transaction is rolled back at the end. One transaction is one consistent
view (WAL on SQLite, ``REPEATABLE READ`` on PostgreSQL): the queries run in one
:meth:`ReadOnlyDatabase.transaction` all see the same registrations, each either
completely or not at all, and they never block the registry that writes.
The command itself, with its options and printing, is :mod:`snapreg.cli.sql`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, StatementError

from snapreg.errors import DatabaseRefusedError, InvalidInputError, SnapregError
from snapreg.storage.readonly import (
    Closing,
    ReadOnlyStore,
    is_read_only_refusal,
    refused_action,
)
from snapreg.storage.transactions import storage_error

# What a query may start with, after blanks and comments. EXPLAIN and WITH can hide
# a write, which the read-only connection refuses.
_QUERY_KEYWORDS_SHOWN = (
    "SELECT",
    "WITH",
    "VALUES",
    "TABLE",
    "EXPLAIN",
    "SHOW",
    "PRAGMA",
)
_QUERY_KEYWORDS = frozenset(keyword.lower() for keyword in _QUERY_KEYWORDS_SHOWN)
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)
_MISSING_PARAMETER = re.compile(r"value is required for bind parameter '([^']+)'")


class WriteRefusedError(InvalidInputError):
    """A statement that would change the database; refused, nothing was changed."""


class QueryError(InvalidInputError):
    """A statement the database could not run: bad syntax, unknown table, ..."""


@dataclass(frozen=True)
class QueryResult:
    """The answer to one statement.

    Attributes:
        columns: Column names, in order; empty for a statement without rows.
        rows: The rows, as tuples of the driver's values.
    """

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class ReadOnlyDatabase(Closing):
    """A database opened for reading only, to run SQL written by people.

    Example::

        with ReadOnlyDatabase("sqlite:///snapreg.sqlite") as database:
            result = database.query("SELECT count(*) FROM snapshot_node")
    """

    def __init__(self, url: str | URL) -> None:
        """Open a database for reading; nothing is created or migrated.

        Any database will do, snapreg's schema or not: the statements are the
        user's.

        Args:
            url: SQLAlchemy URL of a SQLite file or a PostgreSQL database.

        Raises:
            ConfigurationError: for an in-memory SQLite URL (nothing to read).
            NotFoundError: for a SQLite file that does not exist.
            StorageUnavailableError: when the driver is missing.
        """
        self._store = ReadOnlyStore(url)
        self.location = self._store.location

    def close(self) -> None:
        """Release the database connections."""
        self._store.close()

    def query(
        self, statement: str, parameters: Mapping[str, Any] | None = None
    ) -> QueryResult:
        """Run one statement in a read-only transaction of its own.

        Args:
            statement: One SQL statement; ``:name`` marks a parameter.
            parameters: Values of the statement's parameters, by name.

        Raises:
            WriteRefusedError: the statement would change something.
            QueryError: the database could not run it.
            StorageUnavailableError: the database cannot be reached.
        """
        with self.transaction() as transaction:
            return transaction.query(statement, parameters)

    @contextmanager
    def transaction(self) -> Iterator[ReadOnlyTransaction]:
        """A read-only transaction: every query in it sees the same database state.

        Raises:
            StorageUnavailableError: the database cannot be reached.
        """
        with self._store.transaction() as connection:
            yield ReadOnlyTransaction(connection, self._store.backend, self.location)


class ReadOnlyTransaction:
    """Queries sharing one read-only transaction (see ReadOnlyDatabase.transaction)."""

    def __init__(self, connection: Connection, backend: str, location: str) -> None:
        self._connection = connection
        self._backend = backend
        self._location = location

    def query(
        self, statement: str, parameters: Mapping[str, Any] | None = None
    ) -> QueryResult:
        """Run one statement in this transaction.

        Args:
            statement: One SQL statement; ``:name`` marks a parameter.
            parameters: Values of the statement's parameters, by name.

        Raises:
            WriteRefusedError: the statement would change something (on
                PostgreSQL the transaction cannot be used any more after this).
            QueryError: the database could not run it.
        """
        _check_is_a_query(statement)
        try:
            result = self._connection.execute(text(statement), dict(parameters or {}))
            self._check_transaction_still_open()
            if not result.returns_rows:
                return QueryResult((), [])
            return QueryResult(
                tuple(result.keys()), [tuple(row) for row in result.all()]
            )
        except DBAPIError as err:
            raise self._translate(err) from err
        except OverflowError as err:  # SQLite: an integer beyond 64 bits
            raise QueryError(f"a parameter is out of range: {err}") from err
        except StatementError as err:
            missing = _MISSING_PARAMETER.search(str(err))
            if missing is not None:
                raise QueryError(
                    f"the statement needs a value for :{missing[1]} (pass --param"
                    f" {missing[1]}=VALUE)"
                ) from err
            raise QueryError(_one_line(str(err.orig or err))) from err

    def superuser(self) -> str | None:
        """The PostgreSQL role of this connection if it is a superuser, else None.

        A read-only transaction does not stop a superuser from what a rollback
        does not undo (reloading the configuration, replication slots, reading
        server files); ``snapreg db grant-reader`` makes a role that cannot.
        Ask before any query of the user's: a failed one ends the transaction.
        """
        if self._backend != "postgresql":
            return None
        role, is_superuser = self._connection.exec_driver_sql(
            "SELECT current_user, current_setting('is_superuser')"
        ).one()
        return str(role) if is_superuser == "on" else None

    def _check_transaction_still_open(self) -> None:
        """Refuse COMMIT and ROLLBACK: the read-only transaction is snapreg's."""
        if self._backend != "postgresql":
            return  # SQLite's authorizer refuses them before they run
        # psycopg is only there with snapreg[postgres]; imported when it is used.
        import psycopg
        from psycopg.pq import TransactionStatus

        driver_connection = self._connection.connection.driver_connection
        assert isinstance(driver_connection, psycopg.Connection)
        status = driver_connection.info.transaction_status
        if status != TransactionStatus.INTRANS:
            raise QueryError(
                "snapreg sql runs each statement in a read-only transaction of its"
                " own; leave out BEGIN, COMMIT and ROLLBACK"
            )

    def _translate(self, err: DBAPIError) -> SnapregError:
        """The user's statement failed: say whether it would have written."""
        message = _one_line(str(err.orig))
        reason = refused_action(self._connection)
        if reason is not None:
            return WriteRefusedError(
                f"refused: snapreg sql only reads, and {reason}; the database is"
                " unchanged"
            )
        if is_read_only_refusal(err):
            return WriteRefusedError(
                f"refused: snapreg sql only reads, and the database says: {message};"
                " the database is unchanged"
            )
        if "multiple commands" in message or "one statement at a time" in message:
            return QueryError("snapreg sql runs one statement at a time")
        mapped = storage_error(self._location, err)
        if isinstance(mapped, DatabaseRefusedError):  # bad syntax, unknown table
            return QueryError(message)
        return mapped


def _check_is_a_query(statement: str) -> None:
    """Refuse a statement that does not start like a query, before it runs.

    Only a convenience that names the problem early: the read-only connection is
    what guarantees that nothing changes (``WITH`` may still hold a ``DELETE``).

    Raises:
        QueryError: the statement is empty.
        WriteRefusedError: the statement starts with another keyword.
    """
    if not statement.strip():
        raise QueryError("the statement is empty")
    match = _FIRST_WORD.match(statement)
    keyword = match[1].lower() if match else ""
    if keyword not in _QUERY_KEYWORDS and not statement.lstrip().startswith("("):
        allowed = ", ".join(_QUERY_KEYWORDS_SHOWN)
        raise WriteRefusedError(
            f"refused: snapreg sql only runs queries ({allowed}), not"
            f" {keyword.upper() or repr(statement.strip()[:20])}; the database is"
            " unchanged"
        )


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ---------------------------------------------------------------- formatting


def _plain(value: Any) -> Any:
    """A value as JSON can hold it: times as ISO text, JSON columns as they are."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def format_cell(value: Any) -> str:
    """A value as text, for CSV and tables; JSON values as compact JSON."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _unique_names(columns: Sequence[str]) -> list[str]:
    """Column names made unique for JSON objects: a second ``id`` becomes ``id_2``."""
    seen: dict[str, int] = {}
    names = []
    for column in columns:
        seen[column] = seen.get(column, 0) + 1
        names.append(column if seen[column] == 1 else f"{column}_{seen[column]}")
    return names


def format_csv(result: QueryResult) -> str:
    """The result as CSV with a header row; NULL is an empty field."""
    if not result.columns:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([format_cell(value) for value in row] for row in result.rows)
    return buffer.getvalue()


def json_rows(result: QueryResult) -> list[dict[str, Any]]:
    """The result as a list of objects, one per row, keyed by column, for JSON.

    NaN and infinities are left as floats: the command line's one JSON writer
    turns them into null, as in every other command's JSON.
    """
    names = _unique_names(result.columns)
    return [
        {name: _plain(value) for name, value in zip(names, row, strict=True)}
        for row in result.rows
    ]
