"""A least-privilege reader role on PostgreSQL: ``snapreg db grant-reader``.

``snapreg sql`` and the readers run every query in a read-only transaction, but a
read-only transaction does not stop a superuser: ``pg_reload_conf()``, replication
slots, ``dblink_exec`` and server file reads are not writes a rollback undoes. The
database's own privileges are what stop them, so readers should log in as a role
that has nothing but ``SELECT`` on snapreg's tables and views.

:func:`grant_reader` creates such a role, or brings an existing one back to it:

* ``SELECT`` on snapreg's tables and views (and ``alembic_version``, which the
  readers check), every other privilege on them revoked; ``USAGE`` on the schema
  and ``CONNECT`` on the database;
* read-only by default (``default_transaction_read_only``) and a statement
  timeout, set on the role, so that a runaway query cannot hold the server;
* no ``SUPERUSER``, ``CREATEDB``, ``CREATEROLE``, ``REPLICATION`` or ``BYPASSRLS``
  and no membership of other roles: an existing role that has any of these is
  refused and left as it is (it is not a reader, whatever it is used for);
* ``LOGIN`` (and a password) only when asked for; otherwise the role is a group
  that users are granted, or the attributes an existing role has are kept.

Everything happens in one transaction: it is granted completely or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from snapreg.errors import ConfigurationError, NotFoundError, StorageUnavailableError
from snapreg.storage.engines import (
    create_database_engine,
    describe_url,
    normalize_url,
    writer,
)
from snapreg.storage.schema import Base
from snapreg.storage.transactions import run_in_connection
from snapreg.storage.versions import out_of_date, schema_state

#: snapreg's views at the newest schema revision (docs/schema.md).
SNAPREG_VIEWS = (
    "run_lineage",
    "snapshot_message_count",
    "snapshot_node_overview",
    "snapshot_trigger",
    "workflow_snapshot_member_overview",
)

#: Default statement timeout of a reader role, in seconds.
DEFAULT_STATEMENT_TIMEOUT = 60
#: The longest statement timeout PostgreSQL takes (2**31 - 1 ms), in seconds.
MAX_STATEMENT_TIMEOUT = 2_147_483

# PostgreSQL's NAMEDATALEN - 1: longer names would be cut short silently.
_MAX_NAME_BYTES = 63
_RESERVED_NAMES = frozenset({"public", "none"})
_POWERS = {
    "rolsuper": "SUPERUSER",
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}


@dataclass(frozen=True)
class ReaderGrant:
    """What :func:`grant_reader` did.

    Attributes:
        role: The role.
        created: Whether it was created (else an existing role was updated).
        login: Whether it can log in.
        database: The database it may read.
        schema: The schema of snapreg's tables.
        relations: The tables and views it may SELECT.
        statement_timeout: Its statement timeout, in seconds.
    """

    role: str
    created: bool
    login: bool
    database: str
    schema: str
    relations: tuple[str, ...]
    statement_timeout: int


def reader_relations() -> tuple[str, ...]:
    """The tables and views a reader may SELECT, by name."""
    tables = {*Base.metadata.tables, "alembic_version"}
    return tuple(sorted(tables | set(SNAPREG_VIEWS)))


def check_role_name(role: str) -> None:
    """Refuse a name PostgreSQL would refuse, cut short, or keep for itself.

    Raises:
        ConfigurationError: what is wrong with it.
    """
    if not role:
        raise ConfigurationError("the role name is empty")
    if "\x00" in role:
        raise ConfigurationError("a role name cannot hold a NUL character")
    if len(role.encode()) > _MAX_NAME_BYTES:
        raise ConfigurationError(
            f"role name {role!r} is longer than {_MAX_NAME_BYTES} bytes; PostgreSQL"
            " would cut it short"
        )
    if role.lower().startswith("pg_") or role.lower() in _RESERVED_NAMES:
        raise ConfigurationError(
            f"role name {role!r} is reserved by PostgreSQL (pg_..., public, none)"
        )


def grant_reader(
    database_url: str,
    role: str,
    *,
    login: bool = False,
    password: str | None = None,
    statement_timeout: int = DEFAULT_STATEMENT_TIMEOUT,
) -> ReaderGrant:
    """Create or update a role that can only read snapreg's tables and views.

    Args:
        database_url: The PostgreSQL database, as a role that may create roles
            and grant on snapreg's tables (their owner, or a superuser).
        role: The reader role's name.
        login: Let the role log in (a password implies it).
        password: Its password; None leaves an existing one as it is.
        statement_timeout: Seconds after which a statement of the role is
            cancelled.

    Raises:
        ConfigurationError: not PostgreSQL, a bad role name, a role that has
            more power than a reader, a timeout out of range, or a statement
            PostgreSQL refused (e.g. no right to create roles).
        NotFoundError: the database holds no snapreg schema yet.
        SchemaVersionError: a schema other than this snapreg's newest.
        StorageUnavailableError: the database cannot be reached.
    """
    url = normalize_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            "grant-reader makes a PostgreSQL role; SQLite has none: snapreg sql and"
            " the readers open a SQLite file read-only (mode=ro), and who may read"
            " it is up to the file's permissions"
        )
    check_role_name(role)
    if not 1 <= statement_timeout <= MAX_STATEMENT_TIMEOUT:
        raise ConfigurationError(
            f"the statement timeout must be 1 to {MAX_STATEMENT_TIMEOUT} seconds,"
            f" not {statement_timeout}"
        )
    engine = create_database_engine(url)
    try:
        try:
            state = schema_state(engine)
        except OperationalError as err:
            raise StorageUnavailableError(
                f"cannot open database {describe_url(url)}: {err.orig}"
            ) from err
        if state == "empty":
            raise NotFoundError(
                f"{describe_url(url)} holds no snapreg schema to read yet (create it"
                f" with: snapreg db upgrade --db '{describe_url(url)}')"
            )
        if state == "older":
            raise out_of_date(engine)
        # the newest schema: its relations are reader_relations()

        def grant(connection: Connection) -> ReaderGrant:
            return _grant(
                connection,
                role,
                login or password is not None,
                password,
                statement_timeout,
            )

        try:
            return run_in_connection(writer(engine), grant)
        except DBAPIError as err:
            detail = " ".join(str(err.orig).split())
            raise ConfigurationError(
                f"PostgreSQL refused to make {role!r} a reader: {detail}"
            ) from err
    finally:
        engine.dispose()


def _grant(
    connection: Connection,
    role: str,
    login: bool,
    password: str | None,
    statement_timeout: int,
) -> ReaderGrant:
    database, schema, current = connection.execute(
        text("SELECT current_database(), current_schema(), current_user")
    ).one()
    existing = (
        connection.execute(
            text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
                " rolbypassrls FROM pg_roles WHERE rolname = :role"
            ),
            {"role": role},
        )
        .mappings()
        .first()
    )
    if existing is not None:
        _refuse_powers(connection, role, existing)
    if role == current:
        raise ConfigurationError(
            f"{role!r} is the role this connection uses; a reader is another role"
        )
    name = _identifier(connection, role)
    secret = [f"PASSWORD {_literal(connection, password)}"] if password else []
    if existing is None:
        connection.exec_driver_sql(
            f"CREATE ROLE {name} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            f" NOBYPASSRLS {'LOGIN' if login else 'NOLOGIN'} " + " ".join(secret)
        )
    elif login:  # it has none of the powers (checked); only what was asked
        connection.exec_driver_sql(f"ALTER ROLE {name} LOGIN " + " ".join(secret))
    connection.exec_driver_sql(
        f"ALTER ROLE {name} SET default_transaction_read_only = on"
    )
    connection.exec_driver_sql(
        f"ALTER ROLE {name} SET statement_timeout = '{int(statement_timeout)}s'"
    )
    connection.exec_driver_sql(
        f"GRANT CONNECT ON DATABASE {_identifier(connection, database)} TO {name}"
    )
    connection.exec_driver_sql(
        f"GRANT USAGE ON SCHEMA {_identifier(connection, schema)} TO {name}"
    )
    relations = reader_relations()
    listed = ", ".join(
        f"{_identifier(connection, schema)}.{_identifier(connection, relation)}"
        for relation in relations
    )
    # whatever the role had on them before: only SELECT from now on
    connection.exec_driver_sql(f"REVOKE ALL ON {listed} FROM {name}")
    connection.exec_driver_sql(f"GRANT SELECT ON {listed} TO {name}")
    can_login = connection.execute(
        text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).scalar_one()
    return ReaderGrant(
        role=role,
        created=existing is None,
        login=bool(can_login),
        database=database,
        schema=schema,
        relations=relations,
        statement_timeout=statement_timeout,
    )


def _refuse_powers(connection: Connection, role: str, existing: Any) -> None:
    """Refuse an existing role with more power than a reader's.

    Raises:
        ConfigurationError: naming its powers or the roles it belongs to.
    """
    powers = [keyword for column, keyword in _POWERS.items() if existing[column]]
    member_of: Sequence[str] = connection.scalars(
        text(
            "SELECT granted.rolname FROM pg_auth_members membership"
            " JOIN pg_roles member ON member.oid = membership.member"
            " JOIN pg_roles granted ON granted.oid = membership.roleid"
            " WHERE member.rolname = :role ORDER BY granted.rolname"
        ),
        {"role": role},
    ).all()
    if not powers and not member_of:
        return
    what = ", ".join(
        powers + ([f"member of {', '.join(member_of)}"] if member_of else [])
    )
    raise ConfigurationError(
        f"role {role!r} exists and has more power than a reader ({what}); it is left"
        " as it is: choose a new role name for the reader"
    )


def _identifier(connection: Connection, name: str) -> str:
    quoted: str = connection.dialect.identifier_preparer.quote_identifier(name)
    return quoted


def _literal(connection: Connection, value: str) -> str:
    """A string literal, quoted by the driver for this connection."""
    from psycopg import sql  # only there with snapreg[postgres], as here

    driver = connection.connection.driver_connection
    literal: str = sql.Literal(value).as_string(driver)
    return literal
