"""Schema migrations: no drift, one head, up and down, refusals, and the wheel."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, Integer, create_engine, inspect, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from snapreg import (
    ForeignDatabaseError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    SnapshotRegistry,
    StorageUnavailableError,
    TransientDatabaseError,
    upgrade_database,
)
from snapreg.storage import engines
from snapreg.storage.engines import create_database_engine, use_wal
from snapreg.storage.schema import Base, Json
from snapreg.storage.versions import (
    current_revision,
    downgrade_engine,
    head_revision,
    migrations_directory,
    upgrade_engine,
)
from snapreg.tools.reader import DatabaseReader
from support.command_line import invoke
from support.streams import macro_micro

ROOT = Path(__file__).resolve().parent.parent
STREAM = macro_micro(5, num_micro=2, num_steps=2)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite'}"
    return str(request.getfixturevalue("empty_postgres_url"))


def test_models_and_migrations_do_not_drift(empty_url: str) -> None:
    engine = create_database_engine(empty_url)
    upgrade_engine(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_there_is_one_head_and_it_is_readable() -> None:
    head = head_revision()
    assert head[:4].isdigit() and "_" in head
    versions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert versions[-1].startswith(head)


def test_upgrade_and_downgrade_round_trip(empty_url: str) -> None:
    engine = create_database_engine(empty_url)
    upgrade_engine(engine)
    assert current_revision(engine) == head_revision()
    assert "snapshot_node" in inspect(engine).get_table_names()
    downgrade_engine(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_engine(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.slow  # runs the alembic command
def test_alembic_command_line_from_the_checkout(tmp_path: Path) -> None:
    database = tmp_path / "cli.sqlite"
    alembic = Path(sys.executable).parent / "alembic"
    result = subprocess.run(
        [str(alembic), "-x", f"url=sqlite:///{database}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(f"sqlite:///{database}")
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.sqlite'}"
    upgrade_database(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE alembic_version SET version_num = '9999_future'")
        )
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match="9999_future, newer than this snapreg"):
        SnapshotRegistry(STREAM.config, tmp_path, database_url=url)


def test_an_older_schema_names_the_upgrade_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'older.sqlite'}"
    upgrade_database(url)
    # the code of a later release: one more revision than the database has
    import snapreg.storage.versions as versions

    known = versions.known_revisions() | {"9999_next"}
    monkeypatch.setattr(versions, "head_revision", lambda: "9999_next")
    monkeypatch.setattr(versions, "known_revisions", lambda: known)
    with pytest.raises(SchemaOutOfDateError, match="snapreg db upgrade --db"):
        SnapshotRegistry(STREAM.config, tmp_path, database_url=url)


def test_tables_without_a_revision_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'foreign.sqlite'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(SchemaOutOfDateError, match="not made by snapreg's migrations"):
        SnapshotRegistry(STREAM.config, tmp_path, database_url=url)


def test_unreachable_databases_are_reported(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        SnapshotRegistry(
            STREAM.config,
            tmp_path,
            database_url=f"sqlite:///{tmp_path}/no/such/dir/x.db",
        )
    with pytest.raises(StorageUnavailableError):
        SnapshotRegistry(
            STREAM.config,
            tmp_path,
            database_url="postgresql://postgres@127.0.0.1:1/none?connect_timeout=2",
        )


def test_migrations_ship_inside_the_package() -> None:
    folder = migrations_directory()
    assert (folder / "env.py").exists()
    assert (folder / "script.py.mako").exists()
    assert any(folder.joinpath("versions").glob("0001_initial.py"))


@pytest.mark.slow  # builds and installs a wheel
def test_installed_wheel_migrates_from_any_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("snapreg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "snapreg/migrations/env.py" in names
    assert "snapreg/migrations/script.py.mako" in names
    assert "snapreg/migrations/versions/0001_initial.py" in names
    target = tmp_path / "installed"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = elsewhere / "installed.sqlite"
    script = (
        "import snapreg, sys; "
        "assert 'installed' in snapreg.__file__, snapreg.__file__; "
        f"print(snapreg.upgrade_database('sqlite:///{database}'))"
    )
    # -S keeps the editable checkout off the path; dependencies come from the venv
    import sqlalchemy

    site = str(Path(sqlalchemy.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), site])}
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == head_revision()


# ------------------------------------------- databases that are not snapreg's
#
# Issue 12: a SQLite file holding only another application's `users` table counted
# as empty; snapreg created its schema in it, switched it to WAL, and the command
# line suggested `snapreg db upgrade` on it. Whatever is not snapreg's is refused
# and left exactly as it was, by the registry, the readers and `db upgrade`.


def _sqlite_file(path: Path, *statements: str) -> Path:
    """A SQLite file at ``path`` holding what ``statements`` create."""
    connection = sqlite3.connect(path)
    with connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()
    return path


def _foreign_sqlite(path: Path) -> Path:
    return _sqlite_file(
        path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO users (name) VALUES ('ada'), ('alan')",
    )


def _other_alembic_application(path: Path) -> Path:
    """Another application's database, itself migrated with Alembic."""
    return _sqlite_file(
        path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32))",
        "INSERT INTO alembic_version VALUES ('3f2a9c1b7e4d')",
        "CREATE TABLE invoice (id INTEGER PRIMARY KEY)",
    )


def _alembic_application_with_branches(path: Path) -> Path:
    """Another Alembic application with two heads: two rows in alembic_version."""
    return _sqlite_file(
        path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32))",
        "INSERT INTO alembic_version VALUES ('a1'), ('b2')",
    )


def _not_a_database(path: Path) -> Path:
    path.write_text("name,value\nada,1\n")
    return path


def _damaged_sqlite(path: Path) -> Path:
    _foreign_sqlite(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)  # the schema page, after the header
    path.write_bytes(bytes(data))
    return path


def _header_only(path: Path) -> Path:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    return path


def _files_beside(path: Path) -> dict[str, str]:
    """Every file in the database's folder, with a hash of its bytes."""
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(path.parent.iterdir())
        if entry.is_file()
    }


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (_foreign_sqlite, ForeignDatabaseError, "not a snapreg database.*users"),
        (
            _other_alembic_application,
            ForeignDatabaseError,
            "not a snapreg database.*invoice",
        ),
        (
            _alembic_application_with_branches,
            ForeignDatabaseError,
            "not a snapreg database.*several revisions",
        ),
        (_not_a_database, StorageUnavailableError, "not a SQLite database"),
        (_damaged_sqlite, StorageUnavailableError, "damaged"),
        (_header_only, StorageUnavailableError, "not a SQLite database"),
    ],
    ids=[
        "users-table",
        "other-alembic",
        "alembic-branches",
        "text-file",
        "damaged",
        "header-only",
    ],
)
def test_a_sqlite_file_that_is_not_snapregs_is_refused_and_untouched(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    error: type[Exception],
    message: str,
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = make(folder / "app.db")
    url = f"sqlite:///{path}"
    before = _files_beside(path)

    with pytest.raises(error, match=message):
        SnapshotRegistry(STREAM.config, tmp_path, database_url=url)
    with pytest.raises(error, match=message):
        upgrade_database(url)
    with pytest.raises(error, match=message) as refused:
        DatabaseReader(url)
    # named as the user named it, not as the read-only engine opens it
    assert f"{url} " in str(refused.value) or f"{url}:" in str(refused.value)
    for command in (["db", "upgrade"], ["campaigns"], ["db", "current"]):
        outcome = invoke(capsys, *command, "--db", url)
        assert outcome.status == 1, (command, outcome.stdout)
        assert outcome.stderr.startswith("snapreg: error: ")
        assert outcome.stderr.count("\n") == 1, outcome.stderr
        assert "snapreg db upgrade" not in outcome.stderr, command

    assert _files_beside(path) == before  # byte for byte; no -wal or -shm beside


def test_a_snapreg_database_is_still_switched_to_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ours.sqlite'}"
    with SnapshotRegistry(STREAM.config, tmp_path, database_url=url) as registry:
        registry.add_snapshot(*STREAM.registrations[0])
    connection = sqlite3.connect(tmp_path / "ours.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_a_database_already_in_wal_mode_is_opened_without_a_journal_mode_pragma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eight registries opening one file at once: PRAGMA journal_mode=WAL, sent by
    # every opener, failed in one of them with "database is locked" (SQLite may
    # answer busy to it while another connection sets up or checkpoints the WAL).
    # A file whose header already says WAL needs no pragma at all.
    url = f"sqlite:///{tmp_path / 'ours.sqlite'}"
    upgrade_database(url)
    engine = create_database_engine(url)

    def no_connection() -> None:
        raise AssertionError("use_wal opened a connection to a WAL file")

    monkeypatch.setattr(engine, "raw_connection", no_connection)
    use_wal(engine)
    engine.dispose()


def test_a_snapreg_database_in_rollback_journal_mode_is_switched_to_wal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ours.sqlite"
    url = f"sqlite:///{path}"
    upgrade_database(url)
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()
    with SnapshotRegistry(STREAM.config, tmp_path, database_url=url) as registry:
        registry.add_snapshot(*STREAM.registrations[0])
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_json_columns_behave_as_sqlalchemys_json(empty_url: str) -> None:
    # schema.Json picks JSONB on PostgreSQL itself instead of JSON's variant
    class Probe(DeclarativeBase):
        pass

    class Row(Probe):
        __tablename__ = "json_probe"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        ours: Mapped[Any] = mapped_column(Json, nullable=True)
        theirs: Mapped[Any] = mapped_column(
            JSON().with_variant(JSONB(), "postgresql"), nullable=True
        )

    values = [None, {"port": [1, 2]}, ["Instance start"], 3.5, "text"]
    engine = create_database_engine(empty_url)
    try:
        Probe.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all(
                Row(id=number, ours=value, theirs=value)
                for number, value in enumerate(values)
            )
        with Session(engine) as session, session.begin():
            session.add(Row(id=len(values)))  # neither set
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT ours IS NULL, theirs IS NULL FROM json_probe ORDER BY id")
            ).all()
            read = connection.execute(select(Row.ours, Row.theirs).order_by(Row.id))
            assert [tuple(row) for row in read] == [(v, v) for v in [*values, None]]
        # a None set is JSON null; one never set is SQL NULL
        assert [tuple(row) for row in stored] == [(False, False)] * len(values) + [
            (True, True)
        ]
        if engine.dialect.name == "postgresql":
            types = inspect(engine).get_columns("json_probe")
            assert [str(c["type"]) for c in types[1:]] == ["JSONB", "JSONB"]
    finally:
        Probe.metadata.drop_all(engine)
        engine.dispose()


def _in_rollback_journal(path: Path) -> None:
    """Create snapreg's schema in the file at ``path`` and leave it out of WAL."""
    upgrade_database(f"sqlite:///{path}")
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()


def test_switching_to_wal_waits_for_a_writer_of_the_file(tmp_path: Path) -> None:
    # Eight registries opening one new file at once: one found the schema made
    # and sent PRAGMA journal_mode=WAL while another still held the write lock
    # it had taken to check the schema. SQLite answers such a switch "database
    # is locked" at once, without waiting out its busy timeout.
    path = tmp_path / "ours.sqlite"
    _in_rollback_journal(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
    release.start()
    engine = create_database_engine(f"sqlite:///{path}")
    try:
        use_wal(engine)
    finally:
        release.join()
        other.close()
        engine.dispose()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_a_lock_that_outlasts_the_switch_to_wal_is_snapregs_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "ours.sqlite"
    _in_rollback_journal(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientDatabaseError, match="locked"):
            upgrade_database(f"sqlite:///{path}")
    finally:
        other.execute("ROLLBACK")
        other.close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    connection.close()


def _postgresql_relations(url: str) -> list[tuple[str, str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [
                tuple(row)
                for row in connection.execute(
                    text(
                        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                        " AND n.nspname NOT LIKE 'pg_toast%'"
                        " ORDER BY 1, 2"
                    )
                )
            ]
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["table", "foreign table"])
def test_a_postgresql_database_of_another_application_is_refused_and_untouched(
    empty_postgres_url: str, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    url = empty_postgres_url
    engine = create_engine(url)
    with engine.begin() as connection:
        if kind == "table":
            connection.execute(text("CREATE TABLE users (id int, name text)"))
            connection.execute(text("INSERT INTO users VALUES (1, 'ada')"))
        else:
            connection.execute(text("CREATE EXTENSION file_fdw"))
            connection.execute(
                text("CREATE SERVER files FOREIGN DATA WRAPPER file_fdw")
            )
            connection.execute(
                text(
                    "CREATE FOREIGN TABLE users (line text) SERVER files"
                    " OPTIONS (filename '/dev/null')"
                )
            )
    engine.dispose()
    before = _postgresql_relations(url)

    with pytest.raises(ForeignDatabaseError, match="not a snapreg database.*users"):
        SnapshotRegistry(STREAM.config, None, database_url=url)
    with pytest.raises(ForeignDatabaseError, match="users"):
        upgrade_database(url)
    with pytest.raises(ForeignDatabaseError, match="users"):
        DatabaseReader(url)
    for command in (["db", "upgrade"], ["campaigns"]):
        outcome = invoke(capsys, *command, "--db", url)
        assert outcome.status == 1 and "not a snapreg database" in outcome.stderr
        assert "snapreg db upgrade" not in outcome.stderr

    assert _postgresql_relations(url) == before
