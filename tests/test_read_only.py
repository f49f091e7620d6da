"""Every reader is read-only, by the database itself, on SQLite and PostgreSQL.

The readers (``DatabaseReader``, the run graph behind ``explain`` and ``plot``,
``gc``'s plan and ``snapreg sql``) open the database through one read-only layer.
These tests do not look at how: after every statement a reader runs, a probe
tries to write on that reader's own connection, inside its transaction, and the
database must refuse (PostgreSQL with SQLSTATE 25006, a read-only transaction;
SQLite because the file was opened read-only, or its authorizer refuses). On
PostgreSQL the same probe on the registry's connection writes (and is rolled
back), so the probe can tell.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select, text

from snapreg import SnapregError, SnapshotRegistry
from snapreg.storage import schema
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools.gc import plan_cleanup
from snapreg.tools.reader import DatabaseReader
from snapreg.tools.run_graph import load_run_graph
from snapreg.tools.sql import ReadOnlyDatabase
from support.streams import macro_micro

STREAM = macro_micro(17, num_micro=2, num_steps=3)
PROBE = "INSERT INTO campaign (name, created_at) VALUES ('probe', CURRENT_TIMESTAMP)"
READ_ONLY_SQL_TRANSACTION = "25006"


class WriteProbe:
    """After each statement run under a label, try to write on its connection."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.outcomes: dict[str, list[str]] = {}

    @contextmanager
    def watching(self, label: str) -> Iterator[None]:
        self.label = label
        try:
            yield
        finally:
            self.label = None

    def after_cursor_execute(
        self, conn: Any, cursor: Any, statement: str, *args: Any
    ) -> None:
        if self.label is None:
            return
        self.outcomes.setdefault(self.label, []).append(
            self._try_to_write(cursor.connection)
        )

    @staticmethod
    def _try_to_write(driver_connection: Any) -> str:
        """``written``, or what the database said when it refused."""
        if isinstance(driver_connection, sqlite3.Connection):
            try:
                driver_connection.execute(PROBE)
            except sqlite3.DatabaseError as err:
                return str(err)
            return "written"
        import psycopg

        try:
            # a savepoint inside the statement's transaction, always rolled back
            with driver_connection.transaction(force_rollback=True):
                driver_connection.execute(PROBE)
        except psycopg.Error as err:
            return str(err.sqlstate)
        return "written"


@pytest.fixture
def probe() -> Iterator[WriteProbe]:
    watcher = WriteProbe()
    event.listen(Engine, "after_cursor_execute", watcher.after_cursor_execute)
    try:
        yield watcher
    finally:
        event.remove(Engine, "after_cursor_execute", watcher.after_cursor_execute)


def record(url: str, folder: Path) -> None:
    with SnapshotRegistry(STREAM.config, folder, database_url=url) as registry:
        for instance, metadata in STREAM.registrations:
            registry.add_snapshot(instance, metadata)


def campaigns(url: str) -> int:
    with ReadOnlyDatabase(url) as database:
        return int(database.query("SELECT count(*) FROM campaign").rows[0][0])


def run_every_reader(url: str, probe: WriteProbe) -> None:
    with probe.watching("DatabaseReader"), DatabaseReader(url) as reader:
        reader.schema_status()
        name = reader.campaign_name(None)
        reader.campaigns()
        snapshots = reader.workflow_snapshots(name, run=1)
        assert snapshots, "the stream finds workflow snapshots"
        reader.workflow_snapshot(snapshots[0].id)
        latest = reader.latest_workflow_snapshot(name)
        assert latest is not None
        reader.resume_text(latest, with_config=True)
        reader.instance_history(name, "macro")
    with probe.watching("run graph (explain, plot)"):
        load_run_graph(url, None)
        load_run_graph(url, None, active_only=True)
    with probe.watching("gc plan"):
        plan_cleanup(url, None, keep=1)
    with probe.watching("sql"), ReadOnlyDatabase(url) as database:
        database.query("SELECT count(*) FROM snapshot_node")


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_every_statement_of_every_reader_runs_where_writing_is_refused(
    backend: str,
    probe: WriteProbe,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'snapreg.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    record(url, tmp_path)
    before = campaigns(url)

    run_every_reader(url, probe)

    assert set(probe.outcomes) == {
        "DatabaseReader",
        "run graph (explain, plot)",
        "gc plan",
        "sql",
    }
    for reader, outcomes in probe.outcomes.items():
        if backend == "postgresql":
            assert set(outcomes) == {READ_ONLY_SQL_TRANSACTION}, reader
        else:
            assert "written" not in outcomes, reader
            # the read-only file, or the authorizer that snapreg sql adds
            assert all(
                "readonly" in outcome or "not authorized" in outcome
                for outcome in outcomes
            ), (reader, outcomes)
    assert campaigns(url) == before


@pytest.mark.postgres
def test_the_probe_writes_on_the_registrys_connection(
    postgres_url: str, probe: WriteProbe, tmp_path: Path
) -> None:
    with SnapshotRegistry(STREAM.config, tmp_path, database_url=postgres_url) as reg:
        instance, metadata = STREAM.registrations[0]
        with probe.watching("registry"):
            reg.add_snapshot(instance, metadata)
    assert "written" in probe.outcomes["registry"]
    assert campaigns(postgres_url) == 1  # every probe was rolled back


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_reading_session_refuses_an_insert(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'snapreg.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    record(url, tmp_path)
    intruder = insert(schema.CampaignRow).values(
        name="intruder", created_at=func.current_timestamp()
    )

    with ReadOnlyStore(url) as store:
        with pytest.raises(SnapregError) as refused:
            store.read(lambda session: session.execute(intruder))
        cause = refused.value.__cause__
        if backend == "postgresql":
            assert getattr(cause, "orig", None) is not None
            assert cause.orig.sqlstate == READ_ONLY_SQL_TRANSACTION  # type: ignore[union-attr]
            # a session that turns its own default off still gets read-only
            # transactions: each one begins READ ONLY
            store.read(
                lambda session: session.execute(
                    text(
                        "SELECT set_config('default_transaction_read_only', 'off',"
                        " false)"
                    )
                )
            )
            with pytest.raises(SnapregError) as again:
                store.read(lambda session: session.execute(intruder))
            assert again.value.__cause__.orig.sqlstate == READ_ONLY_SQL_TRANSACTION  # type: ignore[union-attr]
        else:  # the authorizer, before the read-only file would
            assert "not authorized" in str(cause) or "readonly" in str(cause)
        names = store.read(
            lambda session: list(session.scalars(select(schema.CampaignRow.name)))
        )
    assert "intruder" not in names
