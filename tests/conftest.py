"""Shared fixtures: one database URL fixture over SQLite (memory, file) and PostgreSQL.

PostgreSQL tests run against the server named by ``SNAPREG_TEST_POSTGRES_URL``
(default: the local server on 127.0.0.1:5432, database ``test``, user ``postgres``).
Each test gets a database of its own, copied from a template migrated once per
session, and dropped afterwards, so no test ever sees another's rows. Without a
reachable server, or without psycopg, the PostgreSQL tests are skipped with the
reason, except when ``CI`` is ``true`` or ``SNAPREG_REQUIRE_POSTGRES`` is set: then
they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from snapreg.storage.engines import create_database_engine
from snapreg.storage.versions import upgrade_engine

# pytester runs this conftest in pytests of its own (test_postgres_fixture.py).
pytest_plugins = ["pytester"]

# No property test is a timed test: hypothesis fails an example that takes over
# 200 ms by default, which a busy shared machine can make any example take.
# Timing belongs in benchmarks/.
settings.register_profile("snapreg", deadline=None)
settings.load_profile("snapreg")

POSTGRES_ADMIN_URL = os.environ.get(
    "SNAPREG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or bool(
        os.environ.get("SNAPREG_REQUIRE_POSTGRES")
    )


@dataclass
class PostgresServer:
    """The test server: an admin engine and a migrated template database."""

    admin: Engine
    template: str

    def url_for(self, database: str) -> str:
        return (
            make_url(POSTGRES_ADMIN_URL)
            .set(database=database)
            .render_as_string(hide_password=False)
        )

    def create_database(self, *, migrated: bool = True) -> str:
        name = f"snapreg_test_{uuid.uuid4().hex[:12]}"
        template = self.template if migrated else "template0"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _connect_admin() -> Engine:
    """An autocommit engine on the server, checked to answer."""
    # create_engine already imports the driver: psycopg may be missing here.
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except BaseException:
        admin.dispose()
        raise
    return admin


def _unusable(message: str) -> NoReturn:
    """Skip the test that needs the server, or fail it where it must run."""
    if _postgres_required():
        pytest.fail(message + " (CI requires it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server, or a skip (a failure in CI) when unusable.

    Unusable means unreachable, or psycopg not installed (snapreg without its
    ``postgres`` extra).
    """
    try:
        admin = _connect_admin()
    except ImportError as err:
        _unusable(f"PostgreSQL tests need psycopg (snapreg[postgres]): {err}")
    except Exception as err:  # noqa: BLE001 - any failure means "no server"
        _unusable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {err}")
    server = PostgresServer(admin, f"snapreg_template_{uuid.uuid4().hex[:12]}")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{server.template}"'))
    engine = create_database_engine(server.url_for(server.template))
    upgrade_engine(engine)
    engine.dispose()
    try:
        yield server
    finally:
        server.drop_database(server.template)
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def empty_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database without any schema."""
    name = postgres_server.create_database(migrated=False)
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow the PostgreSQL cases of tests marked ``slow_on_postgresql``.

    A PostgreSQL case costs about a second more than a SQLite one (a database
    made and dropped, a commit per registration); tests with dozens of cases
    check the same rules on SQLite in the fast loop and on all backends in full.
    """
    for item in items:
        if item.get_closest_marker("slow_on_postgresql") and item.get_closest_marker(
            "postgres"
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _terminal_width_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables print as wide as the command line makes them without a terminal.

    pytest-xdist's workers set ``COLUMNS=80`` (a developer's shell may export
    anything), which the command line obeys: headers would wrap differently
    than in a plain run.
    """
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's folder for the test, one level down, so that its parent is the test's.

    A registry given no database URL keeps its SQLite file beside its snapshot
    folder; tests that use ``tmp_path`` as that folder must not share the file with
    every other test of the session, whose folders share pytest's parent folder.
    """
    own = tmp_path / "test"
    own.mkdir()
    return own


BACKENDS = [
    pytest.param("sqlite-memory", id="sqlite-memory"),
    pytest.param("sqlite-file", id="sqlite-file"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]
PERSISTENT_BACKENDS = BACKENDS[1:]


def _url_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite-memory":
        return "sqlite://"
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend, SQLite in memory included."""
    return _url_for(request.param, tmp_path, request)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL that outlives the registry: SQLite file and PostgreSQL."""
    return _url_for(request.param, tmp_path, request)
