"""Schema versions: the Alembic revisions every snapreg database goes through.

Every database goes through the Alembic revisions (no ``create_all``): a new, empty
database is migrated to head when a registry opens it, an older one is refused with
the command that upgrades it, and a newer one is refused outright. A database
holding anything else (another application's tables, or a file that is no SQLite
database) is refused and left exactly as it was.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL

from snapreg.errors import (
    ForeignDatabaseError,
    SchemaOutOfDateError,
    SchemaTooNewError,
)
from snapreg.storage.engines import (
    create_database_engine,
    describe_url,
    use_wal,
    writer,
)
from snapreg.storage.locks import SCHEMA_LOCK_SPACE
from snapreg.storage.transactions import translating_errors

if TYPE_CHECKING:
    from alembic.config import Config

_logger = logging.getLogger(__name__)

#: The table in which Alembic keeps a database's schema revision.
VERSION_TABLE = "alembic_version"

#: Every schema revision this code knows, oldest first: the ``revision`` of each
#: file in ``migrations/versions``. Opening a database whose schema is current needs
#: no more than this list, so Alembic (11 MiB and 0.15 s to import) is loaded only
#: when a schema is created, upgraded or downgraded. ``tests/test_fixed_cost.py``
#: fails when the list and the migrations folder disagree.
REVISIONS = (
    "0001_initial",
    "0002_views_and_topology",
    "0003_deleted_snapshot_file",
    "0004_wallclock_comment",
    "0005_restart_points",
    "0006_writer_timeout",
)


def migrations_directory() -> Path:
    """The folder with snapreg's Alembic revisions, inside the installed package."""
    # imported by name: the package maps it to the top-level migrations/ folder
    migrations = importlib.import_module("snapreg.migrations")
    return Path(str(migrations.__file__)).parent


def alembic_config(
    connection: Connection | None = None, url: str | None = None
) -> Config:
    """An Alembic configuration built from the package, usable from any directory."""
    from alembic.config import Config

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
    return REVISIONS[-1]


def known_revisions() -> set[str]:
    """Every schema revision this code knows."""
    return set(REVISIONS)


def current_revision(bind: Engine | Connection) -> str | None:
    """The schema revision of the database, or None if it has none.

    Raises:
        ForeignDatabaseError: several revisions at once: another application's
            Alembic history, never snapreg's, which has one head.
    """
    with _connected(bind) as connection:
        # what Alembic's MigrationContext reads, without importing Alembic
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        revisions = list(
            connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        )
        if len(revisions) > 1:
            raise ForeignDatabaseError(
                f"{describe_url(connection.engine.url)} is not a snapreg database:"
                f" its {VERSION_TABLE} table holds several revisions"
                f" ({', '.join(sorted(revisions))}); snapreg leaves it untouched"
            )
        return revisions[0] if revisions else None


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


def _alembic_command() -> ModuleType:
    """Alembic's commands, imported when a schema is about to change."""
    from alembic import command

    return command


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind an engine to a revision (default: newest)."""
    with writer(engine).begin() as connection:
        _schema_changes_take_turns(connection)
        _alembic_command().upgrade(alembic_config(connection), revision)


def downgrade_engine(engine: Engine, revision: str) -> None:
    """Migrate the database behind an engine down to a revision."""
    with writer(engine).begin() as connection:
        _schema_changes_take_turns(connection)
        _alembic_command().downgrade(alembic_config(connection), revision)


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
                    _alembic_command().upgrade(alembic_config(connection), "head")
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
