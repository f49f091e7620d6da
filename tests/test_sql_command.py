"""``snapreg sql``: answers in three formats, and a database that nothing can change.

The command is invoked through click's test runner. Every statement that would
write is tried on a recorded database and must fail with one line on standard
error, a non-zero exit status, and a database that is the same afterwards, row for
row (and, for SQLite, byte for byte, with no new files next to it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from click.testing import CliRunner, Result
from sqlalchemy import Engine, inspect, text

from snapreg import SnapshotRegistry
from snapreg.cli.sql import sql_command
from snapreg.storage.engines import create_database_engine
from snapreg.tools.sql import QueryError, ReadOnlyDatabase
from support.command_line import invoke, without_superuser_warning
from support.models import MACRO_MICRO_YMMSL
from support.streams import macro_micro

STREAM = macro_micro(401, num_micro=2, num_steps=3)


@dataclass
class Database:
    url: str
    dialect: str
    folder: Path


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    folder = tmp_path_factory.mktemp(f"sql-{request.param}")
    if request.param == "sqlite":
        recorded = Database(f"sqlite:///{folder / 'snapreg.sqlite'}", "sqlite", folder)
        record(recorded)
        yield recorded
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        recorded = Database(server.url_for(name), "postgresql", folder)
        record(recorded)
        yield recorded
    finally:
        server.drop_database(name)


def record(database: Database) -> None:
    with SnapshotRegistry(
        STREAM.config, database.folder, database_url=database.url
    ) as registry:
        for instance, metadata in STREAM.registrations:
            registry.add_snapshot(instance, metadata)


def run_sql(*arguments: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(sql_command, list(arguments), env=env)


def error_lines(result: Result) -> list[str]:
    """Standard error without the warning a superuser connection gets."""
    return without_superuser_warning(result.stderr)


def direct_rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = create_database_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement))]
    finally:
        engine.dispose()


# ---------------------------------------------------------------- answers

NODES = (
    "SELECT snapshot_node_id, instance, num, is_restart, simulation_time,"
    " retired_at FROM snapshot_node_overview ORDER BY snapshot_node_id"
)


def test_csv_has_a_header_and_every_row(database: Database) -> None:
    result = run_sql(NODES, "--db", database.url, "--format", "csv")
    assert result.exit_code == 0, result.stderr
    header, *lines = list(csv.reader(io.StringIO(result.stdout)))
    assert header == [
        "snapshot_node_id",
        "instance",
        "num",
        "is_restart",
        "simulation_time",
        "retired_at",
    ]
    expected = direct_rows(database.url, NODES)
    assert len(lines) == len(expected) > 0
    for line, row in zip(lines, expected, strict=True):
        assert line[:3] == [str(row[0]), row[1], str(row[2])]
        assert line[3] in ("true", "false", "0", "1")
        assert (line[4] == "") == (row[4] is None)
        assert (line[5] == "") == (row[5] is None)


def test_json_is_a_list_of_objects_with_plain_values(database: Database) -> None:
    result = run_sql(
        "SELECT snapshot_node_id, triggers, registered_at, wallclock_time"
        " FROM snapshot_node_overview ORDER BY snapshot_node_id",
        "--db",
        database.url,
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    expected = direct_rows(
        database.url,
        "SELECT id, wallclock_time FROM snapshot_node ORDER BY id",
    )
    assert [(row["snapshot_node_id"], row["wallclock_time"]) for row in answer] == [
        (node_id, wallclock) for node_id, wallclock in expected
    ]
    first = answer[0]
    assert isinstance(first["registered_at"], str)
    triggers = first["triggers"]
    # JSON columns come back as text from SQLite, decoded from PostgreSQL
    decoded = json.loads(triggers) if isinstance(triggers, str) else triggers
    assert decoded == ["Instance start"]


def test_table_shows_the_columns_and_the_number_of_rows(database: Database) -> None:
    result = run_sql(
        "SELECT instance, count(*) AS nodes FROM snapshot_node GROUP BY instance"
        " ORDER BY instance",
        "--db",
        database.url,
    )
    assert result.exit_code == 0, result.stderr
    assert "instance" in result.stdout and "nodes" in result.stdout
    for instance, nodes in direct_rows(
        database.url,
        "SELECT instance, count(*) FROM snapshot_node GROUP BY instance",
    ):
        assert any(
            instance in line and f" {nodes} " in line
            for line in result.stdout.splitlines()
        )
    assert "3 rows" in result.stdout


def test_parameters_are_bound_by_name(database: Database) -> None:
    result = run_sql(
        "SELECT instance, num FROM snapshot_node WHERE instance = :instance"
        " AND num <= :highest ORDER BY num",
        "--db",
        database.url,
        "--format",
        "json",
        "-p",
        "instance=macro",
        "--param",
        "highest=2",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"instance": "macro", "num": 1},
        {"instance": "macro", "num": 2},
    ]
    missing = run_sql("SELECT :instance", "--db", database.url)
    assert missing.exit_code == 1
    assert "needs a value for :instance" in missing.stderr


def test_a_parameter_beyond_64_bits_is_a_query_error(database: Database) -> None:
    with ReadOnlyDatabase(database.url) as reader:
        if database.dialect == "sqlite":  # PostgreSQL takes it as a numeric
            with pytest.raises(QueryError, match="out of range"):
                reader.query("SELECT :x AS x", {"x": 10**30})
        assert reader.query("SELECT 1 AS one").rows == [(1,)]


def test_comments_before_a_query_are_fine(database: Database) -> None:
    result = run_sql(
        "--db",
        database.url,
        "--format",
        "csv",
        "--",
        "-- count\n/* nodes */ SELECT 1 AS one",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["one", "1"]


def test_bad_sql_is_one_line_and_a_failure(database: Database) -> None:
    result = run_sql("SELECT * FROM no_such_table", "--db", database.url)
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = error_lines(result)
    assert line.startswith("snapreg: error:") and "no_such_table" in line


# ----------------------------------------------------------------- refusals

WRITES_ON_BOTH = [
    "DELETE FROM snapshot_node",
    "DROP TABLE consistent_pair",
    "INSERT INTO campaign (name, created_at) VALUES ('intruder', '2026-01-01')",
    "UPDATE run SET number = 99",
    "CREATE TABLE scratch (x INTEGER)",
    "ALTER TABLE run ADD COLUMN scratch INTEGER",
    "CREATE TEMP TABLE scratch (x INTEGER)",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "VACUUM",
    "ANALYZE",
    "SELECT 1; DELETE FROM campaign",
    "EXPLAIN ANALYZE DELETE FROM snapshot_node",
]
WRITES_ON_SQLITE = [
    "WITH doomed AS (SELECT id FROM run) DELETE FROM run WHERE id IN doomed",
    "ATTACH DATABASE '{folder}/attached.sqlite' AS other",
    "VACUUM INTO '{folder}/copy.sqlite'",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA optimize",
    "REINDEX",
    "SAVEPOINT mine",
    "REPLACE INTO campaign (id, name, created_at) VALUES (1, 'x', '2026-01-01')",
    "UPDATE sqlite_master SET sql = NULL",
]
WRITES_ON_POSTGRESQL = [
    "WITH gone AS (DELETE FROM consistent_pair RETURNING *) SELECT count(*) FROM gone",
    "COMMIT; DELETE FROM campaign",
    "SET TRANSACTION READ WRITE",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT nextval(pg_get_serial_sequence('campaign', 'id'))",
    "SELECT * INTO scratch FROM run",
    "DO $$ BEGIN DELETE FROM campaign; END $$",
    "TRUNCATE run CASCADE",
    "LOCK TABLE run IN ACCESS EXCLUSIVE MODE",
    "REINDEX TABLE run",
    "SET default_transaction_read_only = off",
]


def fingerprint(database: Database) -> dict[str, Any]:
    """Everything a statement could have changed: rows, schema, sequences, files."""
    engine: Engine = create_database_engine(database.url, read_only=True)
    try:
        inspector = inspect(engine)
        tables = sorted(inspector.get_table_names())
        found: dict[str, Any] = {
            "tables": tables,
            "views": sorted(inspector.get_view_names()),
        }
        with engine.connect() as connection:
            for table in tables:
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
                found[table] = sorted(repr(tuple(row)) for row in rows)
            if database.dialect == "postgresql":
                found["sequences"] = connection.execute(
                    text("SELECT sequencename, last_value FROM pg_sequences")
                ).all()
            else:
                found["user_version"] = connection.execute(
                    text("PRAGMA user_version")
                ).scalar_one()
                found["journal_mode"] = connection.execute(
                    text("PRAGMA journal_mode")
                ).scalar_one()
    finally:
        engine.dispose()
    if database.dialect == "sqlite":
        found["files"] = {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(database.folder.iterdir())
            if path.suffix in (".sqlite", ".sqlite-wal")
        }
        found["file names"] = sorted(path.name for path in database.folder.iterdir())
    return found


def assert_refused_and_unchanged(database: Database, statement: str) -> None:
    before = fingerprint(database)
    result = run_sql(statement.format(folder=database.folder), "--db", database.url)
    assert result.exit_code == 1, result.stdout
    assert result.stdout == ""
    (line,) = error_lines(result)
    assert line.startswith("snapreg: error: ")
    assert any(
        reason in line
        for reason in ("refused", "one statement at a time", "transaction of its own")
    ), line
    assert fingerprint(database) == before


@pytest.mark.parametrize("statement", WRITES_ON_BOTH)
def test_writing_statements_are_refused_and_change_nothing(
    database: Database, statement: str
) -> None:
    assert_refused_and_unchanged(database, statement)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("statement", WRITES_ON_SQLITE)
def test_sqlite_writes_are_refused_and_change_nothing(
    database: Database, statement: str
) -> None:
    assert_refused_and_unchanged(database, statement)


@pytest.mark.parametrize(
    "database",
    [pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
@pytest.mark.parametrize("statement", WRITES_ON_POSTGRESQL)
def test_postgresql_writes_are_refused_and_change_nothing(
    database: Database, statement: str
) -> None:
    assert_refused_and_unchanged(database, statement)


def test_reading_still_works_after_refusals(database: Database) -> None:
    for statement in ("DELETE FROM campaign", "SELECT 1; DELETE FROM campaign"):
        assert run_sql(statement, "--db", database.url).exit_code == 1
    result = run_sql(
        "SELECT count(*) AS n FROM campaign", "--db", database.url, "--format", "csv"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["n", "1"]


# --------------------------------------------------------- which database


def test_database_comes_from_the_environment_then_the_working_directory(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    query = ("SELECT count(*) AS runs FROM run", "--format", "csv")
    from_environment = run_sql(*query, env={"SNAPREG_DATABASE_URL": database.url})
    assert from_environment.exit_code == 0, from_environment.stderr
    assert from_environment.stdout.splitlines() == ["runs", "1"]

    monkeypatch.delenv("SNAPREG_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    missing = run_sql(*query)
    assert missing.exit_code == 1
    assert f"no database at {tmp_path / 'snapreg.sqlite'}" in missing.stderr
    if database.dialect == "sqlite":
        monkeypatch.chdir(database.folder)
        from_directory = run_sql(*query)
        assert from_directory.exit_code == 0, from_directory.stderr
        assert from_directory.stdout.splitlines() == ["runs", "1"]


def test_an_unreachable_server_is_one_line() -> None:
    result = run_sql(
        "SELECT 1",
        "--db",
        "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2",
    )
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("snapreg: error: cannot open database")


# ---------------------------------------------------------------- NaN and infinity


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON, so they fail here."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def snapshot_fields(
    counts: dict[str, list[int]], timestamp: float, next_timestamp: float | None
) -> dict[str, Any]:
    return {
        "triggers": ["test"],
        "wallclock_time": 1.0,
        "timestamp": timestamp,
        "next_timestamp": next_timestamp,
        "port_message_counts": counts,
        "is_final_snapshot": False,
        "snapshot_filename": f"/nowhere/{timestamp}.pack",
    }


def test_nan_and_infinity_are_null_in_every_json_output(
    persistent_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sql --format json` and the --json of other commands: one convention, null."""
    url = persistent_database_url
    with SnapshotRegistry(
        ymmsl.load(MACRO_MICRO_YMMSL), tmp_path, database_url=url
    ) as registry:
        # an infinite simulation time and next time, and a NaN one (implicit)
        registry.add_snapshot(
            "macro",
            snapshot_fields(
                {"state_out": [1, 1], "state_in": [1, 1]}, math.inf, -math.inf
            ),
        )
        registry.add_snapshot(
            "micro[0]",
            snapshot_fields(
                {"initial_state": [1], "final_state": [1]}, math.nan, math.inf
            ),
        )
        found = registry.add_snapshot(
            "micro[1]",
            snapshot_fields({"initial_state": [1], "final_state": [1]}, 1.0, None),
        )
    assert len(found) == 1

    if not url.startswith("sqlite"):  # SQLite has no NaN: it stores NULL
        computed = run_sql(
            "SELECT CAST('NaN' AS double precision) AS nan,"
            " CAST('-Infinity' AS double precision) AS inf,"
            " CAST('Infinity' AS numeric) AS numeric_inf",
            "--db",
            url,
            "--format",
            "json",
        )
        assert strict_json(computed.stdout) == [
            {"nan": None, "inf": None, "numeric_inf": None}
        ]
    result = run_sql(
        "SELECT instance, simulation_time, next_simulation_time FROM snapshot_node"
        " WHERE NOT is_restart ORDER BY instance",
        "--db",
        url,
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    assert strict_json(result.stdout) == [
        {"instance": "macro", "simulation_time": None, "next_simulation_time": None},
        {"instance": "micro[0]", "simulation_time": None, "next_simulation_time": None},
        {"instance": "micro[1]", "simulation_time": 1.0, "next_simulation_time": None},
    ]

    shown = invoke(capsys, "show", str(found[0].id), "--db", url, "--json")
    assert shown.status == 0, shown.stderr
    times = {
        node["instance"]: (node["timestamp"], node["next_timestamp"])
        for node in strict_json(shown.stdout)["nodes"]
    }
    assert times == {
        "macro": (None, None),
        "micro[0]": (None, None),
        "micro[1]": (1.0, None),
    }

    explained = invoke(capsys, "explain", "--db", url, "--json")
    assert explained.status == 0, explained.stderr
    simulation_times = {
        entry["instance"]: entry["simulation_time"]
        for entry in strict_json(explained.stdout)["instances"]
    }
    assert simulation_times == {"macro": None, "micro[0]": None, "micro[1]": 1.0}
