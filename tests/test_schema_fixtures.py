"""Databases made at every schema revision upgrade to the newest with data intact.

``tests/fixtures/schema_<revision>.sqlite`` was written by snapreg's own code as it
was when that revision was the newest (``tests/fixtures/make_schema_fixture.py``).
On PostgreSQL, a database migrated to the same revision receives the same rows.
Each is refused when opened as it is (naming the upgrade command), upgraded to head
with every row of every older table kept, read back with the same campaigns, runs,
nodes, edges and workflow snapshots, continued (the acknowledged submissions it
held are processed, the run finishes exactly as MUSCLE3 would) and downgraded back
to its revision with its rows intact, then to nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from sqlalchemy import Engine, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url

from fixtures.make_schema_fixture import (
    SCATTER_CAMPAIGN,
    fixture_paths,
    make_command,
    summarize,
)
from snapreg import (
    SchemaOutOfDateError,
    SchemaTooNewError,
    SnapshotRegistry,
    upgrade_database,
)
from snapreg.storage.engines import create_database_engine
from snapreg.storage.versions import (
    alembic_config,
    current_revision,
    downgrade_engine,
    head_revision,
    upgrade_engine,
)
from support.oracle import run_oracle
from support.streams import Stream

ROOT = Path(__file__).resolve().parent.parent


def all_revisions() -> list[str]:
    """Every revision in migrations/versions, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


REVISIONS = all_revisions()


def committed(revision: str) -> bool:
    """Whether the revision's file is in git (True when git cannot tell)."""
    from alembic.script import ScriptDirectory

    path = ScriptDirectory.from_config(alembic_config()).get_revision(revision).path
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return True
    return listed.returncode == 0 or b"not a git repository" in listed.stderr


def require_fixture(revision: str) -> tuple[Path, dict[str, Any]]:
    database, manifest = fixture_paths(revision)
    if not database.exists():
        if not committed(revision):
            pytest.skip(
                f"revision {revision} is not committed yet; once it is, make its"
                f" fixture with: {make_command(revision)}"
            )
        pytest.fail(
            f"no schema fixture for revision {revision}; make it with:"
            f" {make_command(revision)}"
        )
    return database, json.loads(manifest.read_text())


@pytest.mark.parametrize("revision", REVISIONS)
def test_every_revision_has_a_fixture(revision: str) -> None:
    database, manifest = require_fixture(revision)
    engine = create_engine(f"sqlite:///{database}")
    try:
        assert current_revision(engine) == revision
    finally:
        engine.dispose()
    assert manifest["revision"] == revision


# --------------------------------------------------------- preparing a copy


def copy_rows(source: Engine, target: Engine) -> None:
    """Copy every row of every table (but alembic_version) from SQLite to PostgreSQL.

    Foreign keys are not checked while copying (the run and workflow_snapshot
    tables point at each other); sequences are moved past the copied ids.
    """
    tables = MetaData()
    tables.reflect(source)
    target_tables = MetaData()
    target_tables.reflect(target)
    with source.connect() as reading, target.begin() as writing:
        writing.exec_driver_sql("SET session_replication_role = replica")
        writing.exec_driver_sql("SET TIME ZONE 'UTC'")
        for name, table in tables.tables.items():
            if name == "alembic_version":
                continue
            rows = [dict(row._mapping) for row in reading.execute(table.select())]
            for row in rows:
                for column, value in row.items():
                    if hasattr(value, "tzinfo") and value.tzinfo is None:
                        row[column] = value.replace(tzinfo=timezone.utc)
            if rows:
                writing.execute(target_tables.tables[name].insert(), rows)
            if "id" in table.columns:
                writing.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence(:table, 'id'),"
                        " (SELECT coalesce(max(id), 0) + 1 FROM " + f'"{name}"' + "),"
                        " false)"
                    ),
                    {"table": name},
                )
        writing.exec_driver_sql("SET session_replication_role = DEFAULT")


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def at_revision(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A database holding a fixture at its revision: (revision, URL, manifest)."""
    revision = request.param
    database, manifest = require_fixture(revision)
    if backend == "sqlite":
        copy = tmp_path / database.name
        shutil.copyfile(database, copy)
        yield revision, f"sqlite:///{copy}", manifest
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database(migrated=False)
    url = server.url_for(name)
    try:
        target = create_database_engine(url)
        upgrade_engine(target, revision)
        source = create_engine(f"sqlite:///{database}")
        copy_rows(source, target)
        source.dispose()
        target.dispose()
        yield revision, url, manifest
    finally:
        server.drop_database(name)


def table_rows(engine: Engine) -> dict[str, dict[str, list[Any]]]:
    """Per table (views and alembic_version left out), rows as column -> value."""
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        return {
            name: [
                dict(row._mapping)
                for row in connection.execute(
                    table.select().order_by(*table.primary_key.columns)
                )
            ]
            for name, table in tables.tables.items()
            if name != "alembic_version"
        }


def kept(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> bool:
    """Whether every row is still there with the same values in its old columns."""
    if len(before) != len(after):
        return False
    return all(
        all(_same(old[column], new.get(column, _MISSING)) for column in old)
        for old, new in zip(before, after, strict=True)
    )


_MISSING = object()


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) and isinstance(new, float):
        return old == new or (math.isnan(old) and math.isnan(new))
    return bool(old == new)


def summary_of(url: str) -> dict[str, Any]:
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as connection:
            return summarize(connection)
    finally:
        engine.dispose()


def continuation_stream(url: str, manifest: dict[str, Any]) -> tuple[str, Stream]:
    """The campaign to continue and the stream of its latest run."""
    continuation = manifest["continuation"]
    engine = create_engine(make_url(url))
    with engine.connect() as connection:
        configuration = connection.execute(
            text(
                "SELECT r.configuration FROM run r JOIN campaign c"
                " ON c.id = r.campaign_id WHERE c.name = :campaign"
                " ORDER BY r.number DESC LIMIT 1"
            ),
            {"campaign": continuation["campaign"]},
        ).scalar_one()
    engine.dispose()
    registrations = [
        (instance, metadata) for instance, metadata in continuation["registrations"]
    ]
    return continuation["campaign"], Stream(
        "continuation", ymmsl.load(configuration), registrations
    )


# ------------------------------------------------------------------- the tests


@pytest.mark.parametrize("at_revision", REVISIONS, indirect=True)
def test_upgrades_to_head_with_data_intact(
    at_revision: tuple[str, str, dict[str, Any]], tmp_path: Path
) -> None:
    revision, url, manifest = at_revision
    engine = create_database_engine(url)
    before = table_rows(engine)
    assert summary_of(url) == manifest["summary"]
    campaign, stream = continuation_stream(url, manifest)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    if revision != head_revision():
        with pytest.raises(SchemaOutOfDateError, match="snapreg db upgrade --db"):
            SnapshotRegistry(stream.config, folder, database_url=url, campaign=campaign)
        assert table_rows(engine) == before
    assert upgrade_database(url) == head_revision()
    after = table_rows(engine)
    for table, rows in before.items():
        assert table in after, f"table {table} is gone"
        assert kept(rows, after[table]), f"rows of {table} changed"
    assert summary_of(url) == manifest["summary"]
    # the views of later revisions work on the old data
    with engine.connect() as connection:
        for view in inspect(engine).get_view_names():
            connection.execute(text(f'SELECT count(*) FROM "{view}"')).scalar()
    engine.dispose()
    # the campaign goes on: its acknowledged submissions are processed on open
    given = manifest["continuation"]["given"]
    with SnapshotRegistry(
        stream.config, folder, database_url=url, campaign=campaign
    ) as registry:
        assert registry.pending_count() == 0
        for instance, metadata in stream.registrations[given:]:
            registry.add_snapshot(instance, metadata)
        steps = run_oracle(stream)
        latest = registry.run_number
        found = [w for w in registry.workflow_snapshots() if w.run == latest]
        assert sorted(sorted(w.members) for w in found) == sorted(
            sorted(members) for step in steps for members in step.workflow_snapshots
        )
        for instance in stream.instances():
            assert [n.num for n in registry.snapshots(instance)] == steps[-1].active[
                instance
            ]
    # everything else is as it was
    summary = summary_of(url)
    expected = manifest["summary"]
    assert summary.keys() == expected.keys()
    for name in summary:
        if name != campaign:
            assert summary[name] == expected[name]
    assert summary[campaign][:-1] == expected[campaign][:-1]


@pytest.mark.parametrize("at_revision", REVISIONS, indirect=True)
def test_downgrades_back_to_its_revision_and_to_nothing(
    at_revision: tuple[str, str, dict[str, Any]],
) -> None:
    revision, url, manifest = at_revision
    engine = create_database_engine(url)
    before = table_rows(engine)
    tables_before = set(inspect(engine).get_table_names())
    # upgraded when asked to, by opening a campaign that has nothing pending
    configuration = next(
        row["configuration"]
        for row in before["run"]
        if row["campaign_id"]
        == next(c["id"] for c in before["campaign"] if c["name"] == SCATTER_CAMPAIGN)
    )
    SnapshotRegistry(
        ymmsl.load(configuration),
        None,
        database_url=url,
        campaign=SCATTER_CAMPAIGN,
        upgrade=True,
    ).close()
    assert current_revision(engine) == head_revision()
    downgrade_engine(engine, revision)
    assert current_revision(engine) == revision
    assert set(inspect(engine).get_table_names()) == tables_before
    assert table_rows(engine) == before
    assert summary_of(url) == manifest["summary"]
    downgrade_engine(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_a_fixture_from_a_newer_snapreg_is_refused(tmp_path: Path) -> None:
    database, manifest = require_fixture(REVISIONS[-1])
    copy = tmp_path / "newer.sqlite"
    shutil.copyfile(database, copy)
    url = f"sqlite:///{copy}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_next'"))
    before = table_rows(engine)
    engine.dispose()
    campaign, stream = continuation_stream(url, manifest)
    with pytest.raises(SchemaTooNewError, match="9999_next, newer than this snapreg"):
        SnapshotRegistry(stream.config, None, database_url=url, campaign=campaign)
    with pytest.raises(SchemaTooNewError):
        SnapshotRegistry(
            stream.config, None, database_url=url, campaign=campaign, upgrade=True
        )
    engine = create_engine(url)
    assert table_rows(engine) == before
    engine.dispose()
