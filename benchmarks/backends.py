"""Throw-away databases for the benchmarks, and the history they are filled with.

A SQLite file or a PostgreSQL database for one measurement, and
:func:`add_retired_history`, which writes a long run's retired nodes as rows.

PostgreSQL is the server at ``$SNAPREG_BENCH_POSTGRES_URL`` (default: the local
test server); each database is created for one measurement and dropped after it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from sqlalchemy import create_engine, insert, text

from snapreg.storage import schema
from snapreg.storage.engines import create_database_engine, writer

POSTGRES_URL = os.environ.get(
    "SNAPREG_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def sqlite_url() -> Iterator[str]:
    """The URL of a SQLite file in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.sqlite"


def postgres_available() -> bool:
    """Whether the PostgreSQL server answers."""
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure: no server
        return False


@contextmanager
def postgres_url() -> Iterator[str]:
    """The URL of a new PostgreSQL database, dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"snapreg_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_retired_history(url: str, run_id: int, retired: int) -> None:
    """Write ``retired`` retired nodes of ten micros into a run, with their edges.

    As the registry would have left them after a long run: retired nodes (negative
    nums, so that they never meet the registry's own), every other one paired
    with the next.
    """
    engine = create_database_engine(url)
    now = datetime.now(timezone.utc)
    node_table = schema.SnapshotNodeRow.__table__
    try:
        with writer(engine).begin() as connection:
            batch = 50_000
            for start in range(0, retired, batch):
                rows = [
                    {
                        "run_id": run_id,
                        "instance": f"micro[{num % 10}]",
                        "num": -(num + 1),
                        "is_restart": False,
                        "triggers": ["t"],
                        "wallclock_time": 1.0 + num * 1e-4,
                        "simulation_time": 1.0,
                        "next_simulation_time": None,
                        "port_message_counts": {"init_in": [0], "final_out": [0]},
                        "is_final": True,
                        "snapshot_filename": f"/old/micro-{num % 10}_{num}.pack",
                        "snapshot_file_size": 4096,
                        "registered_at": now,
                        "retired_at": now,
                    }
                    for num in range(start, min(start + batch, retired))
                ]
                connection.execute(insert(node_table), rows)
            connection.execute(
                text(
                    "INSERT INTO consistent_pair (lower_node_id, higher_node_id)"
                    " SELECT a.id, b.id FROM snapshot_node a JOIN snapshot_node b"
                    " ON b.id = a.id + 1 AND b.run_id = a.run_id"
                    " WHERE a.run_id = :run AND a.num < 0 AND a.num % 2 = 0"
                ),
                {"run": run_id},
            )
    finally:
        engine.dispose()
