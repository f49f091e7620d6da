"""Engines, schema versions and transactions: everything snapreg asks of SQLAlchemy.

One engine per registry. SQLite gets its per-connection pragmas once, on the
engine's ``connect`` event: a busy timeout, foreign keys, and ``synchronous`` set by
the chosen durability. WAL mode (so that readers never block the writer) is a
setting of the file itself: it is switched on only once the file is known to be
snapreg's (:func:`ensure_schema`, :func:`upgrade_database`), never in a database
that snapreg then refuses. Write transactions on SQLite begin with ``BEGIN
IMMEDIATE`` so that two writers queue for the lock at the start instead of
deadlocking when both try to upgrade a read lock.

Every database goes through the Alembic revisions (no ``create_all``): a new, empty
database is migrated to head when a registry opens it, an older one is refused with
the command that upgrades it, and a newer one is refused outright. A database
holding anything else (another application's tables, or a file that is no SQLite
database) is refused and left exactly as it was.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from snapreg.errors import (
    ConfigurationError,
    DatabaseRefusedError,
    ForeignDatabaseError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    SnapregError,
    StorageFullError,
    StorageUnavailableError,
    TransientDatabaseError,
)

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

Durability = Literal["normal", "full"]

#: Execution option that marks a connection as a writer (``BEGIN IMMEDIATE``).
_WRITE_OPTION = "snapreg_write"

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

#: How long a SQLite connection waits for another connection's lock before the
#: statement fails with "database is locked" (and is retried, see run_transaction).
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: How long a PostgreSQL statement waits for a lock before it fails with SQLSTATE
#: 55P03 (and is retried). Without it a stuck lock holder would block forever.
POSTGRES_LOCK_TIMEOUT_MS = 10_000

#: How many times run_transaction tries a transaction that fails transiently. The
#: pauses between attempts double from 50 ms up to 2 s, about 5 s in all: enough
#: to ride out a PostgreSQL restart or a dropped connection, not so long that a
#: persistent failure goes unreported.
TRANSACTION_ATTEMPTS = 8

#: First key of the PostgreSQL advisory lock that serialises schema changes.
SCHEMA_LOCK_SPACE = 0x736E7073

#: Where Linux lists the mounted file systems, to spot network file systems.
MOUNTS_FILE = Path("/proc/self/mounts")

# File system types on which SQLite's POSIX locks cannot be trusted.
_NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "fuse.ceph",
        "fuse.sshfs",
        "fuse.glusterfs",
        "glusterfs",
        "fuse.s3fs",
        "lustre",
        "gpfs",
        "beegfs",
        "panfs",
    }
)

_SUPPORTED_BACKENDS = ("sqlite", "postgresql")
_DURABILITIES = ("normal", "full")


def migrations_directory() -> Path:
    """The folder with snapreg's Alembic revisions, inside the installed package."""
    # imported by name: the package maps it to the top-level migrations/ folder
    migrations = importlib.import_module("snapreg.migrations")
    return Path(str(migrations.__file__)).parent


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain ``postgresql://`` means psycopg 3.

    Raises:
        ConfigurationError: if the text is not a database URL.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError) as err:
        # ValueError: e.g. a port that is not a number
        raise ConfigurationError(f"not a database URL: {url!r}") from err
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


#: The environment variable that names the database when no URL is given.
DATABASE_URL_VARIABLE = "SNAPREG_DATABASE_URL"
#: The SQLite file's name when snapreg chooses where the database goes.
DEFAULT_DATABASE_FILE = "snapreg.sqlite"


def default_database_url(beside: Path | None) -> str:
    """Where a campaign's database is when no URL is given.

    ``$SNAPREG_DATABASE_URL`` when set: the one way for the several manager starts
    of a campaign, each with a run directory of its own, to share one database.
    Else ``snapreg.sqlite`` in the folder ``beside`` (for MUSCLE3's manager, the run
    directory that holds the snapshot folder), or in memory without one.

    Args:
        beside: The folder that holds the database file, or None.
    """
    from_environment = os.environ.get(DATABASE_URL_VARIABLE)
    if from_environment:
        return from_environment
    if beside is None:
        return "sqlite://"
    return f"sqlite:///{Path(beside).resolve() / DEFAULT_DATABASE_FILE}"


#: What create_database_engine appends to a SQLite file's URI to open it read-only.
_READ_ONLY_URI = "?mode=ro"


def describe_url(url: str | URL) -> str:
    """The URL with any password hidden, for messages and logs.

    The URL of a read-only SQLite engine (a ``file:`` URI, see
    :func:`create_database_engine`) is given back as the user's
    ``sqlite:///PATH``, so that a message naming it, or a command it suggests,
    works as written.
    """
    parsed = normalize_url(url)
    database = parsed.database or ""
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.query.get("uri") == "true"
        and database.startswith("file:")
        and database.endswith(_READ_ONLY_URI)
    ):
        path = url2pathname(urlparse(database.removesuffix(_READ_ONLY_URI)).path)
        parsed = parsed.set(database=path, query={})
    return parsed.render_as_string(hide_password=True)


def is_memory_sqlite(url: URL) -> bool:
    """Whether the URL names a private in-memory SQLite database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_database_engine(
    url: str | URL, *, durability: Durability = "normal", read_only: bool = False
) -> Engine:
    """Create the engine of one registry (or one reader).

    Args:
        url: A SQLAlchemy URL.
        durability: ``"normal"`` (SQLite WAL with ``synchronous=NORMAL``: a
            committed registration survives a crash of the process, the last ones
            may be lost on power loss) or ``"full"`` (``synchronous=FULL``:
            survives power loss, at the cost of an fsync per commit).
        read_only: Open SQLite files with ``mode=ro``.

    Raises:
        ConfigurationError: for a URL that is not usable, a database other than
            SQLite or PostgreSQL, or an unknown durability.
        StorageUnavailableError: when the driver is not installed.
    """
    if durability not in _DURABILITIES:
        raise ConfigurationError(
            f"durability must be one of {', '.join(map(repr, _DURABILITIES))},"
            f" not {durability!r}"
        )
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend not in _SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"snapreg stores its registry in SQLite or PostgreSQL, not {backend!r}"
            f" ({describe_url(parsed)})"
        )
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if is_memory_sqlite(parsed):
            # One connection shared by every thread, or each would see its own
            # empty database.
            kwargs.update(
                poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            database = parsed.database or ""
            if "\x00" in database:
                raise ConfigurationError(
                    f"SQLite file name {database!r} contains a NUL character"
                )
            if read_only:
                uri = Path(database).resolve().as_uri() + _READ_ONLY_URI
                parsed = parsed.set(database=uri, query={"uri": "true"})
            else:
                folder = Path(database).resolve().parent
                if not folder.is_dir():
                    raise StorageUnavailableError(
                        f"cannot create SQLite database {database}: folder {folder}"
                        " does not exist"
                    )
                _warn_if_network_filesystem(folder)
            kwargs["connect_args"] = {"check_same_thread": False}
    elif backend == "postgresql":
        kwargs.update(pool_pre_ping=True)
    try:
        engine = create_engine(parsed, **kwargs)
    except (ImportError, ArgumentError) as err:
        raise StorageUnavailableError(
            f"cannot use {describe_url(parsed)}: {err}"
            + (
                " (install snapreg[postgres] for PostgreSQL)"
                if backend == "postgresql"
                else ""
            )
        ) from err
    if backend == "sqlite":
        _configure_sqlite(engine, durability)
    else:
        _configure_postgresql(engine)
    return engine


def writer(engine: Engine) -> Engine:
    """The same engine (same pool), marked so its transactions take the write lock."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def _configure_sqlite(engine: Engine, durability: Durability) -> None:
    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy's begin event below, not the driver, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
        # no journal_mode here: WAL changes the file, see use_wal
        synchronous = "FULL" if durability == "full" else "NORMAL"
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Straight to the driver: this runs once per transaction, and SQLAlchemy's
        # statement machinery would cost more than the BEGIN itself.
        driver = connection.connection.driver_connection
        assert driver is not None
        if connection.get_execution_options().get(_WRITE_OPTION):
            driver.execute("BEGIN IMMEDIATE")
        else:
            driver.execute("BEGIN")


def use_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL mode (a setting kept in the file itself).

    Called only once the file is known to be snapreg's, or empty. Nothing to do
    for PostgreSQL or an in-memory database.
    """
    if engine.dialect.name != "sqlite" or is_memory_sqlite(engine.url):
        return
    connection = engine.raw_connection()
    try:
        # straight to the driver: outside a transaction, which SQLite requires
        driver = connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _set_lock_timeout(dbapi_connection: Any, connection_record: Any) -> None:
        # A session-level setting, made outside any transaction so that it stays.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = {int(POSTGRES_LOCK_TIMEOUT_MS)}")
        finally:
            dbapi_connection.autocommit = autocommit


def _unescape_mount_field(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/self/mounts."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def network_filesystem_of(folder: Path, mounts_file: Path | None = None) -> str | None:
    """The type of the network file system ``folder`` is on, or None if local.

    Args:
        folder: An absolute path.
        mounts_file: The mount table to read; default :data:`MOUNTS_FILE`.

    Returns:
        The file system type (e.g. ``nfs4``) of the mount that holds ``folder``
        when it is one on which SQLite's locks are unreliable; None when it is
        local or the mount table cannot be read.
    """
    try:
        mounts = (mounts_file or MOUNTS_FILE).read_text().splitlines()
    except OSError:
        return None
    target = str(folder)
    best_length, best_type = -1, ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point, fs_type = _unescape_mount_field(parts[1]), parts[2]
        inside = target == mount_point or target.startswith(
            mount_point.rstrip("/") + "/"
        )
        # the longest mount point that holds the folder is the one it is on
        if inside and len(mount_point) > best_length:
            best_length, best_type = len(mount_point), fs_type
    return best_type if best_type in _NETWORK_FILESYSTEMS else None


def _warn_if_network_filesystem(folder: Path, mounts_file: Path | None = None) -> None:
    """SQLite's locking is unreliable on network file systems; say so loudly."""
    fs_type = network_filesystem_of(folder, mounts_file)
    if fs_type is not None:
        _logger.warning(
            "The SQLite database in %s is on a %s network file system; its locks"
            " are not reliable there and the database may be corrupted. Use a local"
            " disk or PostgreSQL.",
            folder,
            fs_type,
        )


def alembic_config(
    connection: Connection | None = None, url: str | None = None
) -> Config:
    """An Alembic configuration built from the package, usable from any directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    if url is not None:
        # ConfigParser interpolation: a % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"snapreg's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def known_revisions() -> set[str]:
    """Every schema revision this code knows."""
    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


def current_revision(bind: Engine | Connection) -> str | None:
    """The schema revision of the database, or None if it has none.

    Raises:
        ForeignDatabaseError: several revisions at once: another application's
            Alembic history, never snapreg's, which has one head.
    """
    with _connected(bind) as connection:
        try:
            return MigrationContext.configure(connection).get_current_revision()
        except CommandError as err:
            raise ForeignDatabaseError(
                f"{describe_url(connection.engine.url)} is not a snapreg database:"
                f" its alembic_version table holds several revisions ({err});"
                " snapreg leaves it untouched"
            ) from err


@contextmanager
def _connected(bind: Engine | Connection) -> Iterator[Connection]:
    """The connection itself, or a new one of the engine's for the block."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as connection:
        yield connection


def _schema_changes_take_turns(connection: Connection) -> None:
    """Hold off every other schema check or change until this transaction ends.

    SQLite: the writer's ``BEGIN IMMEDIATE`` already excludes every other writer.
    PostgreSQL: a transaction-level advisory lock, so that processes opening a new
    database at the same instant do not all create its tables.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:space, 0)"),
            {"space": SCHEMA_LOCK_SPACE},
        )


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind an engine to a revision (default: newest)."""
    with writer(engine).begin() as connection:
        _schema_changes_take_turns(connection)
        command.upgrade(alembic_config(connection), revision)


def downgrade_engine(engine: Engine, revision: str) -> None:
    """Migrate the database behind an engine down to a revision."""
    with writer(engine).begin() as connection:
        _schema_changes_take_turns(connection)
        command.downgrade(alembic_config(connection), revision)


def upgrade_database(url: str | URL, revision: str = "head") -> str:
    """Create or upgrade snapreg's schema in the database at ``url``.

    Works from any working directory, with snapreg installed as a wheel.

    Returns:
        The revision the database is at afterwards.

    Raises:
        ForeignDatabaseError: the database holds another application's tables.
        SchemaTooNewError: a schema written by a newer snapreg.
        SchemaOutOfDateError: snapreg's tables without a revision.
        StorageUnavailableError: the database cannot be opened, or the file is
            no SQLite database.
    """
    return migrate_database(url, revision)[1]


def migrate_database(url: str | URL, revision: str = "head") -> tuple[str | None, str]:
    """Like :func:`upgrade_database`; returns the revisions before and after."""
    engine = create_database_engine(url)

    def migrate() -> tuple[str | None, str]:
        before = current_revision(engine)
        schema_state(engine)  # refuses what is not snapreg's, or is too new
        use_wal(engine)
        upgrade_engine(engine, revision)
        return before, current_revision(engine) or ""

    try:
        return translating_errors(engine.url, migrate)
    finally:
        engine.dispose()


SchemaState = Literal["current", "empty", "older"]


def schema_state(bind: Engine | Connection) -> SchemaState:
    """Whether the database's schema is this code's newest, absent, or older.

    Only a database without any table, view or sequence (in the schema
    snapreg would use) is empty: one that holds something else, with no
    snapreg schema, is another application's.

    Raises:
        ForeignDatabaseError: tables, views or sequences, but not snapreg's.
        SchemaOutOfDateError: snapreg's tables without a schema revision: they
            were not made by snapreg's migrations.
        SchemaTooNewError: a revision this code does not know, from a newer snapreg.
    """
    with _connected(bind) as connection:
        # one connection: the revision and the tables seen at the same moment
        revision = current_revision(connection)
        head = head_revision()
        if revision == head:
            return "current"
        refuse_foreign(connection, revision)
        if revision is None:
            if _has_snapreg_tables(connection):
                raise SchemaOutOfDateError(
                    f"{describe_url(connection.engine.url)} holds snapreg tables"
                    " without a schema revision; they were not made by snapreg's"
                    " migrations"
                )
            return "empty"
        if revision not in known_revisions():  # snapreg's, from a newer snapreg
            raise SchemaTooNewError(
                f"{describe_url(connection.engine.url)} has schema revision"
                f" {revision}, newer than this snapreg knows (newest: {head});"
                " upgrade snapreg"
            )
        return "older"


def refuse_foreign(bind: Engine | Connection, revision: str | None) -> None:
    """Refuse a database that holds something, but not snapreg's schema.

    Args:
        bind: The database, or a connection to it.
        revision: Its schema revision (:func:`current_revision`).

    Raises:
        ForeignDatabaseError: neither a revision snapreg knows nor snapreg's
            tables, but tables or views of something else (another
            application's ``alembic_version`` included).
    """
    if revision is not None and revision in known_revisions():
        return
    if _has_snapreg_tables(bind):
        return
    relations = database_relations(bind)
    if not relations:
        return
    shown = ", ".join(relations[:5]) + (", ..." if len(relations) > 5 else "")
    plural = "s" * (len(relations) != 1)
    raise ForeignDatabaseError(
        f"{describe_url(bind.engine.url)} is not a snapreg database: it holds"
        f" {len(relations)} table{plural} or view{plural} of something else"
        f" ({shown}) and no snapreg schema; snapreg leaves it untouched (give"
        " snapreg a database of its own)"
    )


def out_of_date(engine: Engine) -> SchemaOutOfDateError:
    """The error for an older schema, naming the command that upgrades it."""
    location = describe_url(engine.url)
    return SchemaOutOfDateError(
        f"{location} has schema revision {current_revision(engine)}, older than"
        f" {head_revision()}; upgrade it with: snapreg db upgrade --db '{location}'"
    )


def ensure_schema(engine: Engine, *, upgrade: bool = False) -> None:
    """Make sure the database has exactly the schema this code expects.

    An empty database is created at the newest revision. An older schema is
    upgraded only when ``upgrade`` is true, else refused.

    Raises:
        SchemaOutOfDateError: the schema is older; names the upgrade command.
        SchemaTooNewError: the schema was written by a newer snapreg.
        StorageUnavailableError: the database cannot be reached.
    """

    def check() -> None:
        if current_revision(engine) != head_revision():
            # Processes that open a new database at the same instant take turns:
            # the first creates the schema, the others find it made.
            with writer(engine).begin() as connection:
                _schema_changes_take_turns(connection)
                state = schema_state(connection)
                if state == "empty" or (state == "older" and upgrade):
                    if state == "older":
                        _logger.info("Upgrading %s to %s", engine.url, head_revision())
                    command.upgrade(alembic_config(connection), "head")
            if state == "older" and not upgrade:
                raise out_of_date(engine)
        use_wal(engine)  # the file is snapreg's (or was empty): now it may change

    translating_errors(engine.url, check)


def _has_snapreg_tables(bind: Engine | Connection) -> bool:
    return inspect(bind).has_table("snapshot_node")


def database_relations(bind: Engine | Connection) -> list[str]:
    """Tables, views and sequences in the schema snapreg uses, by name.

    On SQLite the main database; on PostgreSQL the current schema (foreign
    tables and materialized views included).
    """
    if bind.dialect.name == "sqlite":
        statement = (
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
    else:
        statement = (
            "SELECT c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema()"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY c.relname"
        )
    with _connected(bind) as connection:
        return list(connection.scalars(text(statement)))


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
        # raised as is by the BEGIN IMMEDIATE that _configure_sqlite sends itself
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
    """A writer's own connection, kept between its transactions.

    Taking a connection from the pool and giving it back around every
    registration costs about as much as the registration's statements. A
    registry writes from one thread at a time, so it keeps one connection; after
    any error in a transaction the connection is closed, and the next
    transaction takes a fresh one from the pool.
    """

    def __init__(self, engine: Engine, *, session_locks: bool = False) -> None:
        """Keep a connection of ``engine``'s, taken at the first transaction.

        Args:
            engine: Where the connection comes from.
            session_locks: The connection's session holds locks (PostgreSQL
                advisory locks) that must end with it: a connection given up is
                closed for good instead of going back to the pool.
        """
        self.engine = engine
        self._connection: Connection | None = None
        self._session_locks = session_locks
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
            with connection.begin():
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
