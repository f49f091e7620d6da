"""Opening a snapreg database for reading only: the one way every reader does it.

Looking at a campaign must never change it, and that is enforced by the database
itself, not by the care of the code that reads:

* SQLite: the file is opened with ``mode=ro``, never created (a missing file is
  refused), and while each statement is prepared an authorizer allows reading
  only, so that what the read-only file would still let through is refused as
  well: ``ATTACH`` (and ``VACUUM INTO``, which attaches), which could create
  files, ``BEGIN``/``COMMIT``/savepoints, temporary tables and pragmas that set
  something.
* PostgreSQL: the session's transactions default to ``REPEATABLE READ, READ
  ONLY`` (``SET SESSION CHARACTERISTICS``), and each transaction is begun ``READ
  ONLY`` explicitly as well, so that a session that changes its own default still
  cannot write; every statement is sent as a prepared statement, which holds
  exactly one command (no ``COMMIT; DELETE ...`` in one string).

Every read runs in one transaction, one consistent view (WAL on SQLite,
``REPEATABLE READ`` on PostgreSQL) that never blocks the registry that writes.
Errors are mapped by :func:`snapreg.storage.transactions.storage_error`, the one
mapper of every reader and the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from snapreg.errors import ConfigurationError, NotFoundError
from snapreg.storage.engines import (
    DATABASE_URL_VARIABLE,
    create_database_engine,
    describe_url,
    is_memory_sqlite,
    normalize_url,
)
from snapreg.storage.transactions import run_transaction, translating_errors
from snapreg.storage.versions import (
    current_revision,
    out_of_date,
    refuse_foreign,
    schema_state,
)

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="Closing")

#: Where the SQLite authorizer of a connection is kept (its pool record's info).
_REFUSAL_KEY = "snapreg_refusal"

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


class Closing:
    """A context manager that calls ``close()`` on the way out: what every reader is."""

    def close(self) -> None:
        """Release what it holds."""
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ReadOnlyStore(Closing):
    """A snapreg database opened for reading only (see the module's notes).

    Example::

        with ReadOnlyStore("sqlite:///snapreg.sqlite") as store:
            count = store.read(lambda session: session.scalar(statement))

    Attributes:
        location: The database URL as the user gave it, password hidden.
        backend: ``sqlite`` or ``postgresql``.
    """

    def __init__(self, url: str | URL, *, check_schema: bool = False) -> None:
        """Open a database for reading; nothing is created or migrated.

        Args:
            url: SQLAlchemy URL of a SQLite file or a PostgreSQL database.
            check_schema: Refuse a database whose schema is missing or is not
                the one this snapreg reads (:meth:`check_schema`).

        Raises:
            ConfigurationError: a URL that is not usable for reading (in-memory
                SQLite has nothing to read).
            NotFoundError: no SQLite file there (or, checking the schema, no
                snapreg schema).
            SchemaOutOfDateError: checking the schema, an older one; the message
                names the command that upgrades it.
            SchemaTooNewError: checking the schema, one of a newer snapreg.
            ForeignDatabaseError: checking the schema, another application's
                database.
            StorageUnavailableError: the driver is missing or (checking the
                schema) the database cannot be reached.
        """
        parsed = normalize_url(url)
        self.location = describe_url(parsed)
        self.backend = parsed.get_backend_name()
        if is_memory_sqlite(parsed):
            raise ConfigurationError(
                "an in-memory SQLite database has nothing to read; pass the URL of"
                " a database file or server with --db"
            )
        if self.backend == "sqlite":
            path = Path(parsed.database or "").resolve()
            if not path.is_file():
                raise NotFoundError(
                    f"no database at {path} (snapreg manage creates it on its first"
                    f" run; choose another one with --db or ${DATABASE_URL_VARIABLE})"
                )
        self.engine: Engine = read_only_engine(parsed)
        try:
            if check_schema:
                self.check_schema()
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # ------------------------------------------------------------------ schema

    def revision(self) -> str | None:
        """The database's schema revision; None when it has no snapreg schema.

        Raises:
            ForeignDatabaseError: another application's database.
            StorageUnavailableError: the database cannot be reached.
        """

        def read() -> str | None:
            revision = current_revision(self.engine)
            refuse_foreign(self.engine, revision)
            return revision

        return self._reading(read)

    def check_schema(self) -> None:
        """Refuse a database without snapreg's schema, or with another revision.

        Raises:
            NotFoundError: the database holds no snapreg schema yet.
            SchemaOutOfDateError: an older schema; names the upgrade command.
            SchemaTooNewError: a schema written by a newer snapreg.
            ForeignDatabaseError: another application's database.
            StorageUnavailableError: the database cannot be reached.
        """
        state = self._reading(lambda: schema_state(self.engine))
        if state == "empty":
            raise NotFoundError(
                f"{self.location} holds no snapreg data yet (create the schema"
                f" with: snapreg db upgrade --db '{self.location}')"
            )
        if state == "older":
            raise self._reading(lambda: out_of_date(self.engine))

    # ------------------------------------------------------------------ reading

    def read(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one read-only session transaction.

        Transient failures (a lock, a lost connection) are retried.

        Raises:
            SnapregError: what the database said, mapped by
                :func:`~snapreg.storage.transactions.storage_error`.
        """
        return run_transaction(self.engine, work, doing="read")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One read-only transaction on a connection, rolled back at the end.

        Its snapshot is taken at once (on PostgreSQL that also makes its
        read-only mode final), so every statement run in it sees the same state.

        Raises:
            StorageUnavailableError: the database cannot be reached.
        """
        connection = translating_errors(self.engine.url, self.engine.connect)
        try:
            translating_errors(
                self.engine.url,
                lambda: connection.exec_driver_sql("SELECT 1").all(),
            )
            yield connection
        finally:
            try:
                connection.rollback()
            finally:
                connection.close()

    def _reading(self, action: Callable[[], _T]) -> _T:
        return translating_errors(self.engine.url, action, doing="read")


def read_only_engine(url: str | URL) -> Engine:
    """An engine on which nothing can be written (see the module's notes).

    Raises:
        ConfigurationError: a URL that is not usable.
        StorageUnavailableError: the driver is not installed.
    """
    engine = create_database_engine(url, read_only=True)
    if engine.dialect.name == "sqlite":
        _authorize_reading_only(engine)
    else:
        event.listen(engine, "connect", _make_postgresql_session_read_only)
    return engine


def refused_action(connection: Connection) -> str | None:
    """What the authorizer refused in the connection's last statement, if anything.

    Only SQLite has one; PostgreSQL's refusals come with SQLSTATE 25006.
    """
    refusal = connection.info.get(_REFUSAL_KEY)
    return refusal.reason if isinstance(refusal, _Refusal) else None


def is_read_only_refusal(err: DBAPIError) -> bool:
    """Whether the database refused a statement because it would write."""
    message = str(err.orig)
    # SQLSTATEs: a write in a read-only transaction; making one read-write
    # after it has run a query
    return getattr(err.orig, "sqlstate", None) in ("25006", "25001") or any(
        sign in message
        for sign in ("readonly database", "may not be modified", "cannot VACUUM")
    )


def _authorize_reading_only(engine: Engine) -> None:
    # The authorizer is consulted while a statement is prepared; it is set only
    # around the statements run through the engine, so that the BEGIN and
    # ROLLBACK the engine itself sends are not refused.
    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        refusal = _Refusal()
        connection.info[_REFUSAL_KEY] = refusal
        _driver(connection).set_authorizer(refusal.authorize)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        _driver(connection).set_authorizer(None)

    @event.listens_for(engine, "handle_error")
    def _failed(context: ExceptionContext) -> None:
        connection = context.connection
        if connection is None or connection.invalidated or connection.closed:
            return
        # a connection that is gone has no authorizer to remove
        with suppress(sqlite3.Error):
            _driver(connection).set_authorizer(None)


def _driver(connection: Connection) -> sqlite3.Connection:
    driver = connection.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


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


def _make_postgresql_session_read_only(
    dbapi_connection: Any, connection_record: Any
) -> None:
    # psycopg is only there with snapreg[postgres]; imported when it is used.
    from psycopg import IsolationLevel

    # Prepared statements hold exactly one command each: no "COMMIT; DELETE ...".
    dbapi_connection.prepare_threshold = 0
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(
                "SET SESSION CHARACTERISTICS AS TRANSACTION"
                " ISOLATION LEVEL REPEATABLE READ, READ ONLY"
            )
    finally:
        dbapi_connection.autocommit = autocommit
    # psycopg then begins every transaction with BEGIN ISOLATION LEVEL
    # REPEATABLE READ READ ONLY, whatever the session's default has become.
    dbapi_connection.isolation_level = IsolationLevel.REPEATABLE_READ
    dbapi_connection.read_only = True
