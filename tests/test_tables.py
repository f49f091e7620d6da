"""The registration path's own inserts store exactly what SQLAlchemy's would."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    Integer,
    bindparam,
    event,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from snapreg import SnapshotRegistry
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.storage import sending, statements
from snapreg.storage.codecs import NODE_METADATA_COLUMNS, metadata_to_json, node_values
from snapreg.storage.engines import create_database_engine, writer
from support.streams import macro_micro

STREAM = macro_micro(3, num_micro=2, num_steps=2)

ODD = SnapshotMetadata(
    triggers=["time 1.5 ≥ every 0.5", 'écrit "quoted" \\ back', ""],
    wallclock_time=1e-300,
    timestamp=float("nan"),
    next_timestamp=None,
    port_message_counts={"f_init": [0, 2**62, 7], "o_i": []},
    is_final_snapshot=True,
    snapshot_filename="/tmp/snap shot/ünïcode 'x'.pack",
)


def _rows(connection: Any, table: str, ids: tuple[int, int]) -> list[dict[str, Any]]:
    """Two rows as the driver returns them, without the columns that must differ."""
    rows = connection.exec_driver_sql(
        f"SELECT * FROM {table} WHERE id IN ({ids[0]}, {ids[1]}) ORDER BY id"
    ).all()
    differing = {"id", "submission_id", "num"}
    return [
        {key: value for key, value in row._mapping.items() if key not in differing}
        for row in rows
    ]


def _a_run_and_a_writer(url: str) -> tuple[int, Engine]:
    """A run made by a registry (then closed), and an engine that writes."""
    with SnapshotRegistry(STREAM.config, None, database_url=url) as registry:
        run_id = registry.run_id
    return run_id, writer(create_database_engine(url))


def test_fast_inserts_store_what_sqlalchemy_stores(
    persistent_database_url: str,
) -> None:
    run_id, engine = _a_run_and_a_writer(persistent_database_url)
    now = datetime(2026, 11, 26, 3, 4, 5, 678901, tzinfo=timezone.utc)
    try:
        with engine.begin() as connection:
            first = (
                connection.execute(text("SELECT max(id) FROM submission")).scalar() or 0
            ) + 1
            second = first + 1
            data = metadata_to_json(ODD)
            statements.FAST_SUBMISSION.execute(
                connection, [(first, run_id, "micro[1]", data, now)]
            )
            connection.execute(
                insert(statements.SUBMISSION),
                {
                    "id": second,
                    "run_id": run_id,
                    "instance": "micro[1]",
                    "snapshot_metadata": data,
                    "submitted_at": now,
                },
            )
            node_first = (
                connection.execute(text("SELECT max(id) FROM snapshot_node")).scalar()
                or 0
            ) + 1
            node_second = node_first + 1
            statements.FAST_NODE.execute(
                connection,
                [
                    (node_first, run_id, "micro[1]", 90, False, first, now)
                    + node_values(ODD)
                    + (None,)
                ],
            )
            connection.execute(
                insert(statements.NODE),
                {
                    "id": node_second,
                    "run_id": run_id,
                    "instance": "micro[1]",
                    "num": 91,
                    "is_restart": False,
                    "submission_id": second,
                    "registered_at": now,
                    **dict(zip(NODE_METADATA_COLUMNS, node_values(ODD), strict=True)),
                },
            )
        with engine.connect() as connection:
            submissions = _rows(connection, "submission", (first, second))
            nodes = _rows(connection, "snapshot_node", (node_first, node_second))
    finally:
        engine.dispose()
    assert len(submissions) == 2 and submissions[0] == submissions[1]
    assert len(nodes) == 2 and nodes[0] == nodes[1]
    assert nodes[0]["snapshot_filename"] == ODD.snapshot_filename


def test_many_rows_are_stored_as_sqlalchemy_stores_them_in_one_statement(
    persistent_database_url: str,
) -> None:
    run_id, engine = _a_run_and_a_writer(persistent_database_url)
    now = datetime(2026, 12, 7, 5, 30, 0, 123456, tzinfo=timezone.utc)
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO snapshot_node"):
            sent.append(statement)

    metadata = [
        # what an array literal would have to quote: braces, commas, NULL
        dataclasses.replace(
            ODD, wallclock_time=float(i), snapshot_filename=f'/s/{{a,"{i}"}} NULL'
        )
        for i in range(7)
    ]
    try:
        with engine.begin() as connection:
            start = (
                connection.execute(text("SELECT max(id) FROM snapshot_node")).scalar()
                or 0
            ) + 1
            event.listen(engine, "before_cursor_execute", count)
            # in two calls of different sizes, 2 rows and 5
            for first, last in ((0, 2), (2, 7)):
                statements.FAST_NODE.execute(
                    connection,
                    [
                        (start + i, run_id, f"micro[{i % 2}]", 100 + i, i == 3)
                        + (None, now)
                        + node_values(data)
                        + (i * 1000 if i % 2 else None,)
                        for i, data in enumerate(metadata[first:last], first)
                    ],
                )
            event.remove(engine, "before_cursor_execute", count)
            connection.execute(
                insert(statements.NODE),
                [
                    {
                        "id": start + 100 + i,
                        "run_id": run_id,
                        "instance": f"micro[{i % 2}]",
                        "num": 200 + i,
                        "is_restart": i == 3,
                        "submission_id": None,
                        "registered_at": now,
                        "snapshot_file_size": i * 1000 if i % 2 else None,
                        **dict(
                            zip(NODE_METADATA_COLUMNS, node_values(data), strict=True)
                        ),
                    }
                    for i, data in enumerate(metadata)
                ],
            )
        with engine.connect() as connection:
            rows = [
                {
                    key: value
                    for key, value in row._mapping.items()
                    if key not in ("id", "num")
                }
                for row in connection.exec_driver_sql(
                    "SELECT * FROM snapshot_node WHERE id >= ? ORDER BY id"
                    if connection.dialect.name == "sqlite"
                    else "SELECT * FROM snapshot_node WHERE id >= %s ORDER BY id",
                    (start,),
                )
            ]
    finally:
        engine.dispose()
    assert len(rows) == 14
    assert rows[:7] == rows[7:]
    assert [row["wallclock_time"] for row in rows[:7]] == list(map(float, range(7)))
    # one statement a call (SQLite: an executemany), its text the same whatever
    # the number of rows: the driver and the server keep it prepared
    assert len(sent) == 2
    assert sent[0] == sent[1]


def test_an_error_in_a_pipeline_is_raised_as_sqlalchemy_raises_it(
    persistent_database_url: str,
) -> None:
    run_id, engine = _a_run_and_a_writer(persistent_database_url)
    now = datetime(2026, 12, 7, 8, 0, 0, tzinfo=timezone.utc)
    try:
        with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
            before = connection.execute(text("SELECT max(id) FROM submission")).scalar()
            row = ((before or 0) + 1, run_id, "micro[1]", metadata_to_json(ODD), now)
            with sending.pipelined(connection, 2):
                # a row, then the same row again: the database refuses the
                # second, and (PostgreSQL) says so only when the block ends
                statements.FAST_SUBMISSION.execute(connection, [row])
                statements.FAST_SUBMISSION.execute(connection, [row])
        with engine.connect() as connection:
            after = connection.execute(text("SELECT max(id) FROM submission")).scalar()
    finally:
        engine.dispose()
    # the driver's own error is kept, as SQLAlchemy keeps it; nothing committed
    assert type(raised.value.orig).__module__.split(".")[0] in ("sqlite3", "psycopg")
    assert after == before


@pytest.mark.postgres
def test_only_a_block_of_several_statements_is_pipelined(postgres_url: str) -> None:
    from psycopg import pq

    engine = create_database_engine(postgres_url)
    try:
        with engine.begin() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            # a registration that writes one row: a pipeline would save no wait
            with sending.pipelined(connection, 1):
                alone = driver.pgconn.pipeline_status
            with sending.pipelined(connection, 2):
                together = driver.pgconn.pipeline_status
    finally:
        engine.dispose()
    assert alone == pq.PipelineStatus.OFF
    assert together == pq.PipelineStatus.ON


def test_a_statement_of_one_parameter(persistent_database_url: str) -> None:
    run_id, engine = _a_run_and_a_writer(persistent_database_url)
    # (each kind of statement the registry sends has several)
    clear_folder = statements.FastStatement(
        update(statements.RUN)
        .where(statements.RUN.c.id == bindparam("run_id", type_=Integer))
        .values(snapshot_folder=literal_column("'cleared'")),
        ("run_id",),
    )
    try:
        with engine.begin() as connection:
            clear_folder.execute(connection, [(run_id,)])
        with engine.connect() as connection:
            folders = connection.execute(
                select(statements.RUN.c.id, statements.RUN.c.snapshot_folder)
            ).all()
    finally:
        engine.dispose()
    assert folders == [(run_id, "cleared")]


@pytest.mark.parametrize("echo", [False, True])
def test_statements_sent_without_a_result_are_seen_and_fail_as_sqlalchemy_s(
    persistent_database_url: str, echo: bool, caplog: pytest.LogCaptureFixture
) -> None:
    engine = writer(create_database_engine(persistent_database_url))
    # with statements logged, the full path runs, so that they are logged too
    engine.echo = echo
    seen: list[tuple[str, bool, bool]] = []
    failed: list[str] = []

    def before(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, many: bool
    ) -> None:
        seen.append((statement.split()[0], many, context is None))

    def error(context: Any) -> None:
        failed.append(type(context.original_exception).__name__)

    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    insert_sql = f"INSERT INTO scratch (id, label) VALUES ({mark}, {mark})"
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE scratch (id INTEGER PRIMARY KEY, label TEXT NOT NULL)"
            )
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "handle_error", error)
        with engine.begin() as connection:
            sending.send(connection, insert_sql, (1, "one"))
            sending.send_many(connection, insert_sql, [(2, "two"), (3, "three")])
            stored = sending.fetch(
                connection, f"SELECT id, label FROM scratch WHERE id > {mark}", (1,)
            )
        with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
            sending.send_many(connection, insert_sql, [(4, "four"), (2, "again")])
        with engine.connect() as connection:
            after = connection.exec_driver_sql("SELECT count(*) FROM scratch").scalar()
    finally:
        engine.dispose()
    lean = not echo
    assert stored == [(2, "two"), (3, "three")]
    assert seen == [
        ("INSERT", False, lean),
        ("INSERT", True, lean),
        ("SELECT", False, lean),
        ("INSERT", True, lean),
        ("SELECT", False, False),
    ]
    # the driver's own error is kept, as SQLAlchemy keeps it; nothing committed
    assert type(raised.value.orig).__module__.split(".")[0] in ("sqlite3", "psycopg")
    assert failed == [type(raised.value.orig).__name__]
    assert after == 3
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert ("INSERT INTO scratch" in logged) is echo


def test_a_statement_on_a_broken_driver_connection_fails_as_sqlalchemy_s(
    persistent_database_url: str,
) -> None:
    # the cursor cannot even be made: SQLAlchemy wraps that error as any other
    engine = writer(create_database_engine(persistent_database_url))
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    raised: list[type[BaseException]] = []
    try:
        for run in (
            lambda connection: connection.exec_driver_sql(f"SELECT {mark}", (1,)),
            lambda connection: sending.fetch(connection, f"SELECT {mark}", (1,)),
            lambda connection: sending.send(connection, f"SELECT {mark}", (1,)),
            lambda connection: sending.send_many(
                connection, f"SELECT {mark}", [(1,), (2,)]
            ),
        ):
            with engine.connect() as connection:
                driver = connection.connection.driver_connection
                assert driver is not None
                driver.close()
                with pytest.raises(DBAPIError) as failed:
                    run(connection)
                raised.append(type(failed.value))
    finally:
        engine.dispose()
    assert len(set(raised)) == 1, raised
