"""Plain SQL on a snapreg database, strictly read-only: ``snapreg sql``.

Users ask a campaign's history their own questions while the manager writes it;
the tables and views of ``docs/schema.md`` are the interface. Nothing a query
runs here can change the database, and that is enforced by the database itself,
not guessed from the text of the statement:

* SQLite: the file is opened with ``mode=ro``, and while the statement is
  prepared an authorizer allows reading only, so that statements the read-only
  file would still let through are refused as well: ``ATTACH`` (and ``VACUUM
  INTO``, which attaches), which could create files, ``BEGIN``/``COMMIT``, temporary
  tables and pragmas that set something.
* PostgreSQL: every transaction is ``REPEATABLE READ, READ ONLY``, and a first
  query freezes that (``SET TRANSACTION READ WRITE`` is refused after a query); the
  session defaults to read only as well; and every statement is sent as a prepared
  statement, so that one string cannot smuggle a ``COMMIT`` and a second statement.

A statement that does not even start like a query (``DELETE``, ``ANALYZE``,
``LOCK``, ...) is refused before it is sent, only to name the problem early. Every
transaction is rolled back at the end. One transaction is one consistent
view (WAL on SQLite, ``REPEATABLE READ`` on PostgreSQL): the queries run in one
:meth:`ReadOnlyDatabase.transaction` all see the same registrations, each either
completely or not at all, and they never block the registry that writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, StatementError

from snapreg.cli.options import database_option
from snapreg.errors import (
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    SnapregError,
    StorageUnavailableError,
    TransientDatabaseError,
)
from snapreg.storage.database import (
    DATABASE_URL_VARIABLE,
    create_database_engine,
    describe_url,
    is_memory_sqlite,
    is_transient,
    normalize_url,
)

OUTPUT_FORMATS = ("table", "csv", "json")

# SQLSTATEs of PostgreSQL: a write in a read-only transaction, and an attempt to
# make the transaction read-write after it has run a query.
_READ_ONLY_SQL_TRANSACTION = "25006"
_ACTIVE_SQL_TRANSACTION = "25001"
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

# Pragmas that only read: with no argument they report a setting; the
# introspection ones take a table, index or schema name (or a row limit).
_SQLITE_PRAGMAS_THAT_READ = frozenset(
    {
        "application_id",
        "auto_vacuum",
        "busy_timeout",
        "cache_size",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "function_list",
        "journal_mode",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "schema_version",
        "synchronous",
        "user_version",
    }
)
_SQLITE_INTROSPECTION_PRAGMAS = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
_SQLITE_READING_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
)
# What a refused authorizer action would have done, for the message.
_SQLITE_ACTION_VERBS = {
    sqlite3.SQLITE_INSERT: "insert into",
    sqlite3.SQLITE_UPDATE: "update",
    sqlite3.SQLITE_DELETE: "delete from",
    sqlite3.SQLITE_CREATE_INDEX: "create an index",
    sqlite3.SQLITE_CREATE_TABLE: "create a table",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "create a temporary index",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "create a temporary table",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "create a temporary trigger",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "create a temporary view",
    sqlite3.SQLITE_CREATE_TRIGGER: "create a trigger",
    sqlite3.SQLITE_CREATE_VIEW: "create a view",
    sqlite3.SQLITE_CREATE_VTABLE: "create a virtual table",
    sqlite3.SQLITE_DROP_INDEX: "drop an index",
    sqlite3.SQLITE_DROP_TABLE: "drop table",
    sqlite3.SQLITE_DROP_TEMP_INDEX: "drop a temporary index",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "drop a temporary table",
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: "drop a temporary trigger",
    sqlite3.SQLITE_DROP_TEMP_VIEW: "drop a temporary view",
    sqlite3.SQLITE_DROP_TRIGGER: "drop a trigger",
    sqlite3.SQLITE_DROP_VIEW: "drop a view",
    sqlite3.SQLITE_DROP_VTABLE: "drop a virtual table",
    sqlite3.SQLITE_ALTER_TABLE: "alter table",
    sqlite3.SQLITE_ANALYZE: "analyze",
    sqlite3.SQLITE_ATTACH: "attach a database file",
    sqlite3.SQLITE_DETACH: "detach a database",
    sqlite3.SQLITE_REINDEX: "rebuild an index",
    sqlite3.SQLITE_SAVEPOINT: "use savepoints",
    sqlite3.SQLITE_TRANSACTION: "control transactions",
    sqlite3.SQLITE_PRAGMA: "run pragma",
}


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


class ReadOnlyDatabase:
    """A database opened for reading only, to run SQL written by people.

    Example::

        with ReadOnlyDatabase("sqlite:///snapreg.sqlite") as database:
            result = database.query("SELECT count(*) FROM snapshot_node")
    """

    def __init__(self, url: str | URL) -> None:
        """Open a database for reading; nothing is created or migrated.

        Args:
            url: SQLAlchemy URL of a SQLite file or a PostgreSQL database.

        Raises:
            ConfigurationError: for an in-memory SQLite URL (nothing to read).
            NotFoundError: for a SQLite file that does not exist.
            StorageUnavailableError: when the driver is missing.
        """
        parsed = normalize_url(url)
        self.location = describe_url(parsed)
        self._backend = parsed.get_backend_name()
        if is_memory_sqlite(parsed):
            raise ConfigurationError(
                "an in-memory SQLite database has nothing to read; pass the URL of a"
                " database file or server with --db"
            )
        if self._backend == "sqlite":
            path = Path(parsed.database or "").resolve()
            if not path.is_file():
                raise NotFoundError(
                    f"no database at {path} (choose one with --db or"
                    f" ${DATABASE_URL_VARIABLE})"
                )
        self._engine: Engine = create_database_engine(parsed, read_only=True)
        if self._backend == "postgresql":
            event.listen(self._engine, "connect", _make_postgresql_session_read_only)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
        try:
            connection = self._engine.connect()
        except DBAPIError as err:
            raise _unreachable(self.location, err) from err
        try:
            try:
                if self._backend == "postgresql":
                    connection.exec_driver_sql(
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                    )
                # The first query takes the snapshot; on PostgreSQL it also makes
                # the transaction's read-only mode final.
                connection.exec_driver_sql("SELECT 1").all()
            except DBAPIError as err:
                raise _unreachable(self.location, err) from err
            yield ReadOnlyTransaction(connection, self._backend)
        finally:
            try:
                connection.rollback()
            finally:
                connection.close()


class ReadOnlyTransaction:
    """Queries sharing one read-only transaction (see ReadOnlyDatabase.transaction)."""

    def __init__(self, connection: Connection, backend: str) -> None:
        self._connection = connection
        self._backend = backend

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
        refusal = _Refusal()
        try:
            with self._only_reading(refusal):
                result = self._connection.execute(
                    text(statement), dict(parameters or {})
                )
                self._check_transaction_still_open()
                if not result.returns_rows:
                    return QueryResult((), [])
                return QueryResult(
                    tuple(result.keys()), [tuple(row) for row in result.all()]
                )
        except DBAPIError as err:
            raise _translate(err, refusal) from err
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

    @contextmanager
    def _only_reading(self, refusal: _Refusal) -> Iterator[None]:
        if self._backend != "sqlite":
            yield
            return
        driver_connection = self._connection.connection.driver_connection
        assert isinstance(driver_connection, sqlite3.Connection)
        driver_connection.set_authorizer(refusal.authorize)
        try:
            yield
        finally:
            driver_connection.set_authorizer(None)


class _Refusal:
    """SQLite authorizer that allows reading only and remembers what it refused."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def authorize(
        self,
        action: int,
        first: str | None,
        second: str | None,
        database: str | None,
        trigger_or_view: str | None,
    ) -> int:
        if action in _SQLITE_READING_ACTIONS:
            return sqlite3.SQLITE_OK
        if (
            action == sqlite3.SQLITE_UPDATE
            and first in ("sqlite_master", "sqlite_schema")
            and database == "main"
        ):
            # SQLite asks this of its own bookkeeping when a table-valued function
            # such as json_each is first used; the main database file is opened
            # read-only, so nothing can be written there anyway.
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and first is not None:
            name = first.lower()
            if name in _SQLITE_INTROSPECTION_PRAGMAS or (
                second is None and name in _SQLITE_PRAGMAS_THAT_READ
            ):
                return sqlite3.SQLITE_OK
        if self.reason is None:
            self.reason = _describe_sqlite_action(action, first)
        return sqlite3.SQLITE_DENY


def _describe_sqlite_action(action: int, first: str | None) -> str:
    # CREATE and DROP are first seen as writes to SQLite's catalogue.
    if first in ("sqlite_master", "sqlite_schema"):
        return "this statement would change the schema"
    if first in ("sqlite_temp_master", "sqlite_temp_schema"):
        return "this statement would create or drop temporary objects"
    verb = _SQLITE_ACTION_VERBS.get(action, f"perform action {action}")
    if action == sqlite3.SQLITE_ATTACH:
        return f"this statement would {verb} {first!r}"
    if action == sqlite3.SQLITE_SAVEPOINT:
        return f"this statement would {verb}"
    if action == sqlite3.SQLITE_TRANSACTION:
        return f"this statement would {verb}" + (f" ({first})" if first else "")
    return f"this statement would {verb} {first or ''}".rstrip()


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


def _make_postgresql_session_read_only(
    dbapi_connection: Any, connection_record: Any
) -> None:
    # Prepared statements hold exactly one command each: no "COMMIT; DELETE ...".
    dbapi_connection.prepare_threshold = 0
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
    finally:
        dbapi_connection.autocommit = autocommit


def _translate(err: DBAPIError, refusal: _Refusal) -> SnapregError:
    message = _one_line(str(err.orig))
    if refusal.reason is not None:
        return WriteRefusedError(
            f"refused: snapreg sql only reads, and {refusal.reason}; the database is"
            " unchanged"
        )
    sqlstate = getattr(err.orig, "sqlstate", None)
    if sqlstate in (_READ_ONLY_SQL_TRANSACTION, _ACTIVE_SQL_TRANSACTION) or any(
        sign in message
        for sign in ("readonly database", "may not be modified", "cannot VACUUM")
    ):
        return WriteRefusedError(
            f"refused: snapreg sql only reads, and the database says: {message}; the"
            " database is unchanged"
        )
    if "multiple commands" in message or "one statement at a time" in message:
        return QueryError("snapreg sql runs one statement at a time")
    if is_transient(err):
        return TransientDatabaseError(f"the database is busy: {message}")
    return QueryError(message)


def _unreachable(location: str, err: DBAPIError) -> StorageUnavailableError:
    return StorageUnavailableError(
        f"cannot open database {location}: {_one_line(str(err.orig))}"
    )


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ---------------------------------------------------------------- formatting


def _plain(value: Any) -> Any:
    """A value as JSON can hold it: times as ISO text, JSON columns as they are."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def _cell(value: Any) -> str:
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
    writer.writerows([_cell(value) for value in row] for row in result.rows)
    return buffer.getvalue()


def format_json(result: QueryResult) -> str:
    """The result as a JSON list of objects, one per row, keyed by column."""
    names = _unique_names(result.columns)
    return json.dumps(
        [
            {name: _plain(value) for name, value in zip(names, row, strict=True)}
            for row in result.rows
        ],
        indent=2,
    )


def print_table(result: QueryResult, console: Console) -> None:
    """The result as a table for people; NULL shown dimmed."""
    if not result.columns:
        console.print("The statement ran; it returns no rows.")
        return
    table = Table(caption=f"{len(result.rows)} row{'s' * (len(result.rows) != 1)}")
    for column in result.columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(
            *(
                Text("NULL", style="dim") if value is None else Text(_cell(value))
                for value in row
            )
        )
    console.print(table)


def _parse_parameters(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs; values that read as numbers become numbers."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE", param_hint="'--param'"
            )
        parameters[name.strip()] = _number_or_text(value)
    return parameters


def _number_or_text(value: str) -> int | float | str:
    try:
        number = int(value)
    except ValueError:
        pass
    else:
        if not -(2**63) <= number < 2**63:
            raise click.BadParameter(
                f"{value} is beyond a 64-bit integer, the largest a database"
                " column holds",
                param_hint="'--param'",
            )
        return number
    try:
        return float(value)
    except ValueError:
        return value


def _console() -> Console:
    # Output that goes to a file or pipe gets 120 columns instead of rich's 80.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
    return Console(highlight=False, width=width)


_PRINTERS: dict[str, Callable[[QueryResult], None]] = {
    "table": lambda result: print_table(result, _console()),
    "csv": lambda result: click.echo(format_csv(result), nl=False),
    "json": lambda result: click.echo(format_json(result)),
}


@click.command("sql")
@click.argument("statement")
@database_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default="table",
    show_default=True,
    help="A table for people, or CSV or JSON for programs.",
)
@click.option(
    "--param",
    "-p",
    "parameter_pairs",
    metavar="NAME=VALUE",
    multiple=True,
    help="Value of :NAME in the statement (repeatable); numbers stay numbers.",
)
@click.pass_context
def sql_command(
    context: click.Context,
    statement: str,
    database_url: str,
    output_format: str,
    parameter_pairs: tuple[str, ...],
) -> None:
    """Run one SQL statement on a read-only connection and print its answer.

    The tables and views are described in docs/schema.md, worked queries in
    docs/queries.md. A statement that would change the database is refused and
    nothing is changed. Safe while the manager writes.

    Example: snapreg sql "SELECT * FROM run_lineage" --format csv
    """
    parameters = _parse_parameters(parameter_pairs)
    try:
        with (
            ReadOnlyDatabase(database_url) as database,
            database.transaction() as transaction,
        ):
            superuser = transaction.superuser()
            if superuser is not None:
                click.echo(
                    f"snapreg: warning: connected as PostgreSQL superuser"
                    f" {superuser!r}: a read-only transaction does not stop a"
                    " superuser's pg_reload_conf(), replication slots or server"
                    " file reads; read as a role made with: snapreg db grant-reader"
                    " ROLE (see docs/reliability.md)",
                    err=True,
                )
            result = transaction.query(statement, parameters)
    except SnapregError as err:
        click.echo(f"snapreg: error: {_one_line(str(err))}", err=True)
        context.exit(1)
    _PRINTERS[output_format](result)
