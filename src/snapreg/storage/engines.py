"""Engines and URLs: how snapreg opens SQLite and PostgreSQL through SQLAlchemy.

One engine per registry. SQLite gets its per-connection pragmas once, on the
engine's ``connect`` event: a busy timeout, foreign keys, and ``synchronous`` set by
the chosen durability. WAL mode (so that readers never block the writer) is a
setting of the file itself: it is switched on (:func:`use_wal`) only once the file
is known to be snapreg's (:func:`snapreg.storage.versions.ensure_schema`,
:func:`snapreg.storage.versions.upgrade_database`), never in a database that
snapreg then refuses. Write transactions on SQLite begin with ``BEGIN IMMEDIATE``
so that two writers queue for the lock at the start instead of deadlocking when
both try to upgrade a read lock. A SQLite file on a network file system, where its
locks cannot be trusted, is reported with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from snapreg.errors import ConfigurationError, StorageUnavailableError

_logger = logging.getLogger(__name__)

Durability = Literal["normal", "full"]

#: How long a SQLite connection waits for another connection's lock before the
#: statement fails with "database is locked" (and is retried, see
#: :func:`snapreg.storage.transactions.run_transaction`).
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: How long a PostgreSQL statement waits for a lock before it fails with SQLSTATE
#: 55P03 (and is retried). Without it a stuck lock holder would block forever.
POSTGRES_LOCK_TIMEOUT_MS = 10_000

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
    """The same engine (same pool), whose transactions take the write lock.

    On SQLite a copy of the engine (:meth:`Engine.execution_options`) with a
    ``begin`` listener of its own, which the engine itself does not see; on
    PostgreSQL the engine as it is, its writers holding a lock of their own.
    """
    if engine.dialect.name != "sqlite":
        return engine
    marked = engine.execution_options()
    event.listen(marked, "begin", begin_writing)
    return marked


def begin_writing(connection: Connection) -> None:
    """SQLite: begin the connection's next transaction holding the write lock.

    ``BEGIN IMMEDIATE``, sent to the driver before SQLAlchemy begins the
    transaction, whose own BEGIN then has nothing to do (see :func:`_begin`).
    The engines :func:`writer` returns call it from their ``begin`` event; the
    registry's own writing connection calls it itself, so that the registry's
    engine has no listener of its connections' events: with one, SQLAlchemy
    dispatches every statement, BEGIN and COMMIT of every connection through
    its event machinery, which cost about 10 % of a registration's
    instructions. Nothing to do on PostgreSQL, whose writers hold a lock of
    their own.
    """
    if connection.dialect.name != "sqlite":
        return
    driver = connection.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    driver.execute("BEGIN IMMEDIATE")


def _begin(dbapi_connection: Any) -> None:
    """SQLite: the BEGIN of every transaction SQLAlchemy begins (its ``do_begin``).

    The driver itself would begin one only before a write, and the reads of a
    transaction would not see one state of the database. Straight to the
    driver: SQLAlchemy's statement machinery would cost more than the BEGIN.
    """
    driver = dbapi_connection.driver_connection
    if not driver.in_transaction:  # begun as a writer's (begin_writing)
        driver.execute("BEGIN")


def _configure_sqlite(engine: Engine, durability: Durability) -> None:
    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy's begin (see _begin), not the driver, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
        # no journal_mode here: WAL changes the file, see use_wal
        synchronous = "FULL" if durability == "full" else "NORMAL"
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    # the dialect's own method, not a "begin" listener (see begin_writing)
    engine.dialect.do_begin = _begin  # type: ignore[method-assign]


def use_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL mode (a setting kept in the file itself).

    Called only once the file is known to be snapreg's, or empty. Nothing to do
    for PostgreSQL or an in-memory database.
    """
    if engine.dialect.name != "sqlite" or is_memory_sqlite(engine.url):
        return
    if _in_wal_mode(engine.url):
        # No pragma, no lock: SQLite may answer "database is locked" to one while
        # another connection sets up or checkpoints the WAL, and registries often
        # open one file at the same moment.
        return
    connection = engine.raw_connection()
    try:
        # straight to the driver: outside a transaction, which SQLite requires
        driver = connection.driver_connection
        assert driver is not None
        _switch_to_wal(driver, engine.url)
    finally:
        connection.close()


def _switch_to_wal(driver: sqlite3.Connection, url: URL) -> None:
    """Send ``PRAGMA journal_mode=WAL``, trying again while the file is locked.

    SQLite answers the switch "database is locked" at once, without waiting out
    its busy timeout, while another connection holds the write lock: the switch
    starts as a reader, and a reader that waited for a writer's lock could
    deadlock with it. Registries that open a new file together hold that lock in
    turn to check its schema, so the switch is tried again, for as long as the
    busy timeout, until it succeeds or another opener has made the switch.

    Raises:
        sqlite3.OperationalError: the lock outlasted the busy timeout, or
            anything else stopped the switch.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            driver.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
        if _in_wal_mode(url):
            return
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


#: Bytes 18 and 19 of a SQLite file's header, its format's write and read versions:
#: 2 in a database in WAL mode (https://www.sqlite.org/fileformat.html).
_WAL_HEADER = (18, b"\x02\x02")


def _in_wal_mode(url: URL) -> bool:
    """Whether the header of the SQLite file at ``url`` says it is in WAL mode.

    False when that cannot be read (no file yet, an empty one, a URI filename).
    """
    if url.query.get("uri") == "true" or not url.database:
        return False
    offset, versions = _WAL_HEADER
    try:
        with open(url.database, "rb") as file:
            file.seek(offset)
            return file.read(len(versions)) == versions
    except OSError:
        return False


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
