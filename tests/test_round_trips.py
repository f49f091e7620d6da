"""A registration costs a bounded number of statements, whatever the scale.

Counts every statement SQLAlchemy sends (an executemany counts once: the driver
sends its rows in one go) during each ``add_snapshot``. The bound must not grow with
the number of instances, with the number of workflow snapshots a registration
completes, or with the history a run has accumulated.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from snapreg import SnapshotRegistry
from support.streams import Stream, macro_micro

# the ids of every table (one statement), nodes, edges, workflow snapshots,
# members, retirement; the writer's heartbeat now and then
MAX_STATEMENTS = 7


@contextmanager
def counting() -> Iterator[list[int]]:
    counter = [0]

    def count(*args: Any) -> None:
        counter[0] += 1

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def statements_per_registration(
    registry: SnapshotRegistry,
    stream: Stream,
    counted: Callable[[], AbstractContextManager[list[int]]] | None = None,
) -> list[int]:
    """What ``counted`` (default: the statements sent) counts during each
    registration of the stream."""
    counts = []
    with (counted or counting)() as counter:
        for instance, metadata in stream.registrations:
            before = counter[0]
            registry.add_snapshot(instance, metadata)
            counts.append(counter[0] - before)
    return counts


def test_opening_a_new_run_reads_none_of_its_nodes_back(
    persistent_database_url: str,
) -> None:
    # the graph of its restart nodes is built as their rows are written
    stream = macro_micro(5, num_micro=30, num_steps=1)
    reads: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            statement.lstrip().startswith("SELECT")
            and "FROM snapshot_node" in statement
            and "max(id)" not in statement
        ):
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with SnapshotRegistry(
            stream.config, None, database_url=persistent_database_url
        ) as registry:
            opened = len(reads)
            registry.add_snapshot(*stream.registrations[0])
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert opened == 0, reads


@pytest.mark.parametrize("micro", [1, 30, 300])
def test_statements_do_not_grow_with_instances(
    persistent_database_url: str, micro: int
) -> None:
    stream = macro_micro(5, num_micro=micro, num_steps=3, micro_intermediate=False)
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        counts = statements_per_registration(registry, stream)
        found = len(registry.workflow_snapshots())
    assert found > 0  # the bound covers registrations that complete snapshots
    assert max(counts) <= MAX_STATEMENTS, counts


def test_statements_do_not_grow_with_history(persistent_database_url: str) -> None:
    stream = macro_micro(6, num_micro=4, num_steps=60, micro_intermediate=False)
    half = len(stream.registrations) // 2
    early = Stream(stream.name, stream.config, stream.registrations[:half])
    late = Stream(stream.name, stream.config, stream.registrations[half:])
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        first = statements_per_registration(registry, early)
        retired_before_late = sum(
            1 for node in registry.history("macro") if not node.active
        )
        second = statements_per_registration(registry, late)
    assert retired_before_late > 20
    assert max(second) <= max(first) <= MAX_STATEMENTS


def test_workflow_snapshots_per_registration_do_not_add_statements(
    persistent_database_url: str,
) -> None:
    # several micro candidates: one registration completes many workflow snapshots
    stream = macro_micro(7, num_micro=5, num_steps=3, intermediates_per_reuse=2)
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        counts = statements_per_registration(registry, stream)
        total = len(registry.workflow_snapshots())
    assert total > len(stream.registrations)  # more snapshots than registrations
    assert max(counts) <= MAX_STATEMENTS, counts


# PostgreSQL: the ids and the writer check (one answer needed before the rows can
# be written), the batch's rows sent together, the commit; the heartbeat now
# and then
MAX_ROUND_TRIPS = 4


@contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count the waits for a PostgreSQL server's answer.

    A statement sent outside a pipeline is one wait; consecutive statements sent
    in a pipeline share one (its sync); so does a commit.
    """
    from psycopg import pq

    counter = [0]
    in_pipeline = [False]

    def statement(connection: Any, *args: Any) -> None:
        driver = connection.connection.driver_connection
        pipelined = driver.pgconn.pipeline_status != pq.PipelineStatus.OFF
        if not (pipelined and in_pipeline[0]):
            counter[0] += 1
        in_pipeline[0] = pipelined

    def commit(*args: Any) -> None:
        counter[0] += 1
        in_pipeline[0] = False

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)
    try:
        yield counter
    finally:
        event.remove(Engine, "before_cursor_execute", statement)
        event.remove(Engine, "commit", commit)


@pytest.mark.postgres
def test_a_registration_waits_for_postgresql_a_bounded_number_of_times(
    postgres_url: str,
) -> None:
    stream = macro_micro(7, num_micro=5, num_steps=3, intermediates_per_reuse=2)
    with SnapshotRegistry(stream.config, None, database_url=postgres_url) as registry:
        counts = statements_per_registration(registry, stream, counting_round_trips)
        total = len(registry.workflow_snapshots())
    assert total > len(stream.registrations)  # many rows of every kind
    assert max(counts) <= MAX_ROUND_TRIPS, counts


def writer_session_plans(registry: SnapshotRegistry) -> dict[str, tuple[int, int]]:
    """The prepared statements of the registry's writing session: (generic plans,
    custom plans) of each, by its text."""
    rows = registry._store.write(
        lambda connection: connection.exec_driver_sql(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).all()
    )
    return {row.statement: (row.generic_plans, row.custom_plans) for row in rows}


@pytest.mark.postgres
def test_postgresql_plans_the_writer_s_statements_once_not_at_each_registration(
    postgres_url: str,
) -> None:
    # psycopg prepares a statement the sixth time it runs; the server then plans
    # it anew at each execution while a plan for the parameters looks cheaper
    # than a generic one, which the ids' generate_series(1, $n) always does
    stream = macro_micro(7, num_micro=3, num_steps=20)
    third = len(stream.registrations) // 3
    sessions = []
    with SnapshotRegistry(stream.config, None, database_url=postgres_url) as registry:
        for instance, metadata in stream.registrations[:third]:
            registry.add_snapshot(instance, metadata)
        sessions.append(writer_session_plans(registry))
        # the session is lost; the one that replaces it is set up the same way
        backend = registry._store.write(
            lambda connection: connection.exec_driver_sql(
                "SELECT pg_backend_pid()"
            ).scalar_one()
        )
        admin = create_engine(postgres_url)
        with admin.connect() as connection:
            assert connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}
            ).scalar_one()
        admin.dispose()
        for instance, metadata in stream.registrations[third : 2 * third]:
            registry.add_snapshot(instance, metadata)
        sessions.append(writer_session_plans(registry))
    for plans in sessions:
        ids = {sql: counts for sql, counts in plans.items() if "nextval" in sql}
        assert ids and max(generic for generic, _ in ids.values()) >= 10, plans
        assert all(custom == 0 for _, custom in plans.values()), plans


def _statements_sent_with_a_result(register: Callable[[], None]) -> list[str]:
    """The statements ``register`` sent through SQLAlchemy's full execution path,
    which builds an execution context and a result object around each one."""
    full: list[str] = []

    def record(
        _conn: Any, _cur: Any, statement: str, _: Any, context: Any, *__: Any
    ) -> None:
        # the lease's heartbeat (every few seconds, not per registration) may go
        # the full way
        if context is not None and not statement.startswith("UPDATE run "):
            full.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        register()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return full


@pytest.mark.parametrize("threads", [0, 3])
def test_a_registration_s_statements_build_no_result_objects(
    persistent_database_url: str, threads: int
) -> None:
    # SQLAlchemy's execution context and result cost about as much as a SQLite
    # statement itself; the registration path reads what it needs off the cursor
    stream = macro_micro(7, num_micro=threads or 3, num_steps=4)
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        if threads:
            registry.start()

        def register() -> None:
            if not threads:
                for instance, metadata in stream.registrations:
                    registry.add_snapshot(instance, metadata)
                return
            workers = [
                threading.Thread(
                    target=lambda name=name: [
                        registry.register_snapshot(instance, metadata)
                        for instance, metadata in stream.registrations
                        if instance == name
                    ]
                )
                for name in {instance for instance, _ in stream.registrations}
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            while registry.pending_count():
                time.sleep(0.001)

        sent = _statements_sent_with_a_result(register)
        found = len(registry.workflow_snapshots())
        if threads:
            registry.shutdown()
            registry.join()
    assert found > 0  # nodes, edges, workflow snapshots, members and retirements
    assert sent == []


def test_a_registration_takes_the_write_lock_at_begin(
    tmp_path: Path,
) -> None:
    # BEGIN IMMEDIATE: the ids are read as max(id) + 1, so no other writer may
    # come between that read and the inserts
    path = tmp_path / "lock.sqlite"
    stream = macro_micro(7, num_micro=2, num_steps=2)
    locked: list[bool] = []

    def probe(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "max(id)" not in statement:
            return
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            locked.append(False)
        except sqlite3.OperationalError:
            locked.append(True)
        finally:
            other.close()

    with SnapshotRegistry(
        stream.config, None, database_url=f"sqlite:///{path}"
    ) as registry:
        event.listen(Engine, "before_cursor_execute", probe)
        try:
            for instance, metadata in stream.registrations:
                registry.add_snapshot(instance, metadata)
        finally:
            event.remove(Engine, "before_cursor_execute", probe)
    assert len(locked) == len(stream.registrations)
    assert all(locked)


_NO_EVENTS = """
import json, sqlite3, sys
from snapreg import SnapshotRegistry
from snapreg.storage.engines import writer
from support.streams import macro_micro

path = sys.argv[1]
stream = macro_micro(7, num_micro=2, num_steps=2)
url = "sqlite:///" + path
with SnapshotRegistry(stream.config, None, database_url=url) as registry:
    for instance, metadata in stream.registrations:
        registry.add_snapshot(instance, metadata)
    engine = registry._store.engine
    dispatched = engine._has_events
    with writer(engine).begin() as connection:  # a tool's write transaction
        connection.exec_driver_sql("SELECT 1")
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            writer_locks = False
        except sqlite3.OperationalError:
            writer_locks = True
        other.close()
    with engine.connect() as connection:  # a reader's transaction
        connection.exec_driver_sql("SELECT 1")
        reader_in_transaction = connection.connection.driver_connection.in_transaction
        other = sqlite3.connect(path, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # a reader does not take the write lock
        other.rollback()
        other.close()
print(json.dumps([dispatched, engine._has_events, writer_locks, reader_in_transaction]))
"""


def test_the_registry_s_sqlite_engine_dispatches_no_events_of_its_own(
    tmp_path: Path,
) -> None:
    # A listener of the engine's connections (the begin event once took the
    # write lock) makes SQLAlchemy dispatch every statement, BEGIN and COMMIT
    # through its event machinery: about 10 % of a registration's
    # instructions. A fresh interpreter: the tests' own listeners are on the
    # Engine class, and SQLAlchemy never forgets that one was there.
    done = subprocess.run(
        [sys.executable, "-c", _NO_EVENTS, str(tmp_path / "events.sqlite")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    dispatched, after_a_writer, writer_locks, reader_in_transaction = json.loads(
        done.stdout
    )
    assert dispatched is False
    assert after_a_writer is False  # the tools' writer engine has its own
    assert writer_locks is True
    assert reader_in_transaction is True
