"""`snapreg db grant-reader`: a least-privilege reader role on the real PostgreSQL.

Issue 12: `snapreg sql` as a superuser could do what a rollback does not undo
(replication slots, `pg_reload_conf()`, `dblink_exec` writes, server file reads).
The reader role may SELECT snapreg's tables and views and nothing else; these tests
log in as it and try each of those.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from snapreg import SnapshotRegistry
from snapreg.cli.sql import sql_command
from snapreg.storage.engines import create_database_engine
from snapreg.storage.grants import SNAPREG_VIEWS, reader_relations
from snapreg.storage.schema import Base
from snapreg.storage.versions import upgrade_engine
from snapreg.tools.reader import DatabaseReader
from support.command_line import Outcome, invoke
from support.streams import macro_micro

STREAM = macro_micro(12, num_micro=2, num_steps=2)


@dataclass
class Reader:
    admin_url: str  # the test server's superuser, on the test's database
    role: str

    @property
    def url(self) -> str:
        return (
            make_url(self.admin_url)
            .set(username=self.role)
            .render_as_string(hide_password=False)
        )


def _drop_role(admin_url: str, role: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
            ).first()
            if exists:
                quoted = engine.dialect.identifier_preparer.quote_identifier(role)
                connection.execute(text(f"DROP OWNED BY {quoted}"))
                connection.execute(text(f"DROP ROLE {quoted}"))
    finally:
        engine.dispose()


@pytest.fixture
def recorded(postgres_url: str, tmp_path: Path) -> str:
    """A PostgreSQL database with a small campaign in it."""
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=postgres_url, campaign="c"
    ) as registry:
        for instance, metadata in STREAM.registrations:
            registry.add_snapshot(instance, metadata)
    return postgres_url


def _role_fixture(recorded: str, role: str) -> Iterator[Reader]:
    try:
        yield Reader(recorded, role)
    finally:
        _drop_role(recorded, role)


@pytest.fixture
def reader(recorded: str) -> Iterator[Reader]:
    yield from _role_fixture(recorded, f"snapreg_reader_{uuid.uuid4().hex[:8]}")


def _grant(
    capsys: pytest.CaptureFixture[str], reader: Reader, *options: str
) -> Outcome:
    return invoke(
        capsys, "db", "grant-reader", reader.role, *options, "--db", reader.admin_url
    )


def _as_reader(reader: Reader, statement: str) -> list[tuple[object, ...]]:
    """Run a statement logged in as the reader role; its rows."""
    engine = create_engine(reader.url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement))]
    finally:
        engine.dispose()


def _refused_as_reader(reader: Reader, statement: str) -> str:
    """The error a statement gets as the reader, even with read-only mode off."""
    engine = create_engine(reader.url)
    try:
        with engine.connect() as connection:
            # the role's read-only default is only a default: privileges must hold
            connection.execute(text("SET default_transaction_read_only = off"))
            connection.commit()
            with pytest.raises(DBAPIError) as refused:
                connection.execute(text(statement))
                connection.commit()
            return str(refused.value.orig)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- roles


@pytest.mark.postgres
def test_the_reader_reads_every_table_and_view_and_nothing_else(
    capsys: pytest.CaptureFixture[str], reader: Reader
) -> None:
    outcome = _grant(capsys, reader, "--login")

    assert outcome.status == 0, outcome.stderr
    assert f"Created role {reader.role}" in outcome.stdout
    relations = reader_relations()
    assert {"campaign", "snapshot_node", "alembic_version", "run_lineage"} <= set(
        relations
    )
    for relation in relations:
        _as_reader(reader, f"SELECT count(*) FROM {relation}")
    assert _as_reader(reader, "SHOW default_transaction_read_only") == [("on",)]
    assert _as_reader(reader, "SHOW statement_timeout") == [("1min",)]
    # the readers and snapreg sql work as the role, without a warning
    with DatabaseReader(reader.url) as database_reader:
        [campaign] = database_reader.campaigns()
        assert campaign.name == "c"
    answer = CliRunner().invoke(
        sql_command, ["SELECT count(*) AS n FROM run_lineage", "--db", reader.url]
    )
    assert answer.exit_code == 0, answer.stderr
    assert "superuser" not in answer.stderr

    for statement in (
        "INSERT INTO campaign (name) VALUES ('x')",
        "UPDATE snapshot_node SET num = num + 1",
        "DELETE FROM workflow_snapshot",
        "TRUNCATE deleted_snapshot_file",
        "DROP VIEW run_lineage",
        "CREATE TABLE scratch (x int)",
    ):
        message = _refused_as_reader(reader, statement)
        assert "permission denied" in message or "must be owner" in message, (
            statement,
            message,
        )
    assert "permission denied" in _refused_as_reader(reader, "SELECT pg_reload_conf()")
    assert "permission denied" in _refused_as_reader(
        reader, "SELECT pg_read_file('postgresql.conf')"
    )
    assert "replication" in _refused_as_reader(
        reader, "SELECT pg_create_physical_replication_slot('snapreg_slot')"
    )


@pytest.mark.postgres
def test_the_reader_cannot_write_through_dblink(
    capsys: pytest.CaptureFixture[str], reader: Reader
) -> None:
    admin = create_engine(reader.admin_url)
    with admin.begin() as connection:
        connection.execute(text("CREATE EXTENSION dblink"))
    admin.dispose()
    assert _grant(capsys, reader, "--login").status == 0
    database = make_url(reader.admin_url).database

    message = _refused_as_reader(
        reader,
        f"SELECT dblink_exec('host=127.0.0.1 dbname={database} user=postgres',"
        " 'CREATE TABLE written_by_dblink (x int)')",
    )

    assert "password is required" in message or "permission denied" in message
    engine = create_engine(reader.admin_url)
    try:
        assert not inspect(engine).has_table("written_by_dblink")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_granting_again_updates_the_role(
    capsys: pytest.CaptureFixture[str], reader: Reader
) -> None:
    assert _grant(capsys, reader, "--login").status == 0
    admin = create_engine(reader.admin_url)
    quoted = admin.dialect.identifier_preparer.quote_identifier(reader.role)
    with admin.begin() as connection:  # someone gave it more than it should have
        connection.execute(text(f"GRANT INSERT, DELETE ON campaign TO {quoted}"))
    admin.dispose()

    again = _grant(capsys, reader, "--statement-timeout", "5", "--json")

    assert again.status == 0, again.stderr
    assert '"created": false' in again.stdout
    assert _as_reader(reader, "SHOW statement_timeout") == [("5s",)]
    assert "permission denied" in _refused_as_reader(
        reader, "INSERT INTO campaign (name) VALUES ('x')"
    )
    assert _as_reader(reader, "SELECT count(*) FROM campaign") == [(1,)]


@pytest.mark.postgres
def test_a_password_makes_a_login_role(
    capsys: pytest.CaptureFixture[str],
    reader: Reader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNAPREG_READER_PASSWORD", "correct horse 'battery\"")

    outcome = _grant(capsys, reader, "--password")

    assert outcome.status == 0, outcome.stderr
    assert "correct horse" not in outcome.stdout + outcome.stderr
    engine = create_engine(reader.admin_url)
    try:
        with engine.connect() as connection:
            can_login, password = connection.execute(
                text(
                    "SELECT rolcanlogin, rolpassword FROM pg_authid"
                    " WHERE rolname = :role"
                ),
                {"role": reader.role},
            ).one()
    finally:
        engine.dispose()
    assert can_login and password.startswith("SCRAM-SHA-256$")


@pytest.mark.postgres
def test_a_role_name_that_needs_quoting_is_just_a_name(
    capsys: pytest.CaptureFixture[str], recorded: str
) -> None:
    role = f'reader"; DROP TABLE campaign; -- {uuid.uuid4().hex[:6]}'
    for reader in _role_fixture(recorded, role):
        outcome = _grant(capsys, reader, "--login")

        assert outcome.status == 0, outcome.stderr
        assert _as_reader(reader, "SELECT count(*) FROM campaign") == [(1,)]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("", "empty"),
        ("x" * 64, "longer than 63 bytes"),
        ("pg_snapreg", "reserved"),
        ("public", "reserved"),
        ("postgres", "SUPERUSER"),
        ("pg_read_server_files", "reserved"),
    ],
)
def test_a_bad_role_name_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], recorded: str, role: str, message: str
) -> None:
    # Only this name's roles: other tests (or pytest-xdist workers) on the same
    # server create and drop roles of their own meanwhile. PostgreSQL would cut a
    # name to 63 bytes.
    roles = text(
        "SELECT rolname, rolconfig FROM pg_roles"
        " WHERE rolname IN (:role, :cut) ORDER BY rolname"
    )
    names = {"role": role, "cut": role.encode()[:63].decode(errors="ignore")}
    engine = create_engine(recorded)
    with engine.connect() as connection:
        before = connection.execute(roles, names).all()
    outcome = invoke(capsys, "db", "grant-reader", role, "--db", recorded)

    assert outcome.status == 1, outcome.stdout
    assert outcome.stderr.startswith("snapreg: error: ")
    assert outcome.stderr.count("\n") == 1, outcome.stderr
    assert message in outcome.stderr
    with engine.connect() as connection:
        after = connection.execute(roles, names).all()
    engine.dispose()
    assert after == before


@pytest.mark.postgres
def test_a_role_with_more_power_is_refused_untouched(
    capsys: pytest.CaptureFixture[str], reader: Reader
) -> None:
    admin = create_engine(reader.admin_url)
    quoted = admin.dialect.identifier_preparer.quote_identifier(reader.role)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE ROLE {quoted} LOGIN"))
        connection.execute(text(f"GRANT pg_read_server_files TO {quoted}"))
    admin.dispose()

    outcome = _grant(capsys, reader)

    assert outcome.status == 1
    assert "member of pg_read_server_files" in outcome.stderr
    assert _as_reader(reader, "SHOW default_transaction_read_only") == [("off",)]


def test_sqlite_has_no_roles(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    outcome = invoke(capsys, "db", "grant-reader", "someone", "--db", url)

    assert outcome.status == 1
    assert "PostgreSQL" in outcome.stderr and "read-only" in outcome.stderr
    assert not (tmp_path / "db.sqlite").exists()


@pytest.mark.postgres
def test_snapreg_sql_warns_a_superuser(recorded: str) -> None:
    answer = CliRunner().invoke(sql_command, ["SELECT 1 AS one", "--db", recorded])

    assert answer.exit_code == 0, answer.stderr
    assert "warning" in answer.stderr and "superuser" in answer.stderr
    assert "snapreg db grant-reader" in answer.stderr
    assert "one" in answer.stdout


def test_the_reader_gets_every_view_of_the_schema(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'views.sqlite'}")
    upgrade_engine(engine)
    views = set(inspect(engine).get_view_names())
    tables = set(inspect(engine).get_table_names())
    engine.dispose()

    assert views == set(SNAPREG_VIEWS)
    assert set(reader_relations()) == views | tables
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
