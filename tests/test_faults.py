"""Faults the registry must survive without losing or duplicating anything.

Durability settings and network file systems; transient database errors (locks,
serialization failures, deadlocks, dropped connections, a restarted PostgreSQL
server) that are retried a bounded number of times and then reported as
:class:`TransientDatabaseError`, never as bad input; and one writer per run across
processes and machines, with take-over of a dead or silent holder.

The checks after each fault are those of the crash torture (:func:`verify`): every
registration stored exactly once and in order, the same nodes, edges and workflow
snapshots as an uninterrupted run and as MUSCLE3, no orphan rows, files and rows
one to one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

import snapreg.storage.engines as engines
import snapreg.storage.transactions as transactions
from snapreg import (
    ConfigurationError,
    DatabaseRefusedError,
    InvalidInputError,
    SnapshotRegistry,
    StorageFullError,
    TransientDatabaseError,
    WriterConflictError,
)
from snapreg.storage.engines import create_database_engine, network_filesystem_of
from snapreg.storage.versions import ensure_schema
from support.entries import register_or_raise
from support.streams import Stream, chain, macro_micro
from support.torture import (
    database_rows,
    expected_results,
    inspection_engine,
    verify,
)
from support.writers import (
    age_heartbeats,
    end_session,
    lock_holder,
    run_id_of,
    run_lock_held,
)

STREAM = macro_micro(21, num_micro=3, num_steps=5)
TESTS = Path(__file__).resolve().parent


def campaign_of(stream: Stream) -> str:
    """The default campaign name of a stream: its model's name."""
    return str(stream.config.root_model().name)


def replay(
    registry: SnapshotRegistry, stream: Stream, start: int = 0, stop: int | None = None
) -> None:
    """Submit registrations ``start:stop`` through register_snapshot."""
    for instance, metadata in stream.registrations[start:stop]:
        register_or_raise(registry, instance, metadata)


def assert_all_processed(registry: SnapshotRegistry) -> None:
    """register_snapshot returns processed: nothing acknowledged waits."""
    assert registry.pending_count() == 0


def check_campaign(
    url: str, folder: Path, stream: Stream, tmp_path: Path, campaign: str
) -> None:
    """The campaign is exactly what an uninterrupted replay makes of the stream."""
    reference = tmp_path / f"reference-{campaign}"
    reference.mkdir()
    expected = expected_results(stream, reference)
    assert verify(url, folder, stream, campaign, expected) == []


def retries_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The retry warnings of run_transaction."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "snapreg.storage.transactions"
        and "retrying" in record.getMessage()
    ]


def snapshot_folder(tmp_path: Path) -> Path:
    """A fresh snapshot folder under ``tmp_path``."""
    folder = tmp_path / "snapshots"
    folder.mkdir(parents=True)
    return folder


# ------------------------------------------------------------------- durability


@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2)])
def test_durability_sets_sqlite_synchronous_in_wal_mode(
    tmp_path: Path, durability: Any, synchronous: int
) -> None:
    engine = create_database_engine(
        f"sqlite:///{tmp_path / 'durable.sqlite'}", durability=durability
    )
    ensure_schema(engine)  # WAL once the (empty) file is known to be snapreg's
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (
            connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            == engines.SQLITE_BUSY_TIMEOUT_MS
        )
    engine.dispose()


def test_an_unknown_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="durability must be one of"):
        SnapshotRegistry(STREAM.config, tmp_path, durability="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(("durability", "synced"), [("normal", False), ("full", True)])
def test_full_durability_syncs_workflow_snapshot_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Any, synced: bool
) -> None:
    synced_files: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced_files.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    with SnapshotRegistry(STREAM.config, tmp_path, durability=durability) as registry:
        for registration in STREAM.registrations:
            registry.add_snapshot(*registration)
    files = list(tmp_path.glob("snapshot_*.ymmsl"))
    assert files
    assert bool(synced_files) is synced
    if synced:
        assert len(synced_files) >= len(files)


# --------------------------------------------------------- network file systems


def fake_mounts(tmp_path: Path, lines: list[str]) -> Path:
    mounts = tmp_path / "mounts"
    mounts.write_text("\n".join(lines) + "\n")
    return mounts


def test_network_filesystems_are_recognised(tmp_path: Path) -> None:
    mounts = fake_mounts(
        tmp_path,
        [
            "/dev/sda1 / ext4 rw,relatime 0 0",
            f"fileserver:/export {tmp_path}/nfs nfs4 rw,vers=4.2 0 0",
            f"/dev/sdb1 {tmp_path}/nfs/local ext4 rw 0 0",
            f"//server/share {tmp_path}/with\\040space cifs rw 0 0",
            "garbage",
        ],
    )
    assert network_filesystem_of(tmp_path / "nfs", mounts) == "nfs4"
    assert network_filesystem_of(tmp_path / "nfs" / "deep" / "er", mounts) == "nfs4"
    # a local disk mounted inside the network share is local
    assert network_filesystem_of(tmp_path / "nfs" / "local" / "x", mounts) is None
    # a name that merely starts like the mount point is not on it
    assert network_filesystem_of(tmp_path / "nfsx", mounts) is None
    assert network_filesystem_of(tmp_path / "with space" / "db", mounts) == "cifs"
    assert network_filesystem_of(tmp_path, mounts) is None
    assert network_filesystem_of(tmp_path, tmp_path / "no-such-file") is None


def test_opening_sqlite_on_a_network_filesystem_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "local"
    shared = tmp_path / "shared"
    # the database goes beside the snapshot folder: on the file system mounted there
    (local / "snapshots").mkdir(parents=True)
    (shared / "snapshots").mkdir(parents=True)
    mounts = fake_mounts(
        tmp_path, ["/dev/sda1 / ext4 rw 0 0", f"srv:/x {shared} nfs rw 0 0"]
    )
    monkeypatch.setattr(engines, "MOUNTS_FILE", mounts)
    with caplog.at_level(logging.WARNING, logger="snapreg.storage.engines"):
        with SnapshotRegistry(STREAM.config, local / "snapshots"):
            pass
        assert not [r for r in caplog.records if "network file system" in r.message]
        with SnapshotRegistry(STREAM.config, shared / "snapshots"):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        str(shared) in message and "nfs network file system" in message
        for message in warnings
    ), warnings


# ------------------------------------------------------- transient errors: SQLite


@pytest.fixture
def impatient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locks time out after 50 ms; three attempts; so giving up takes a moment."""
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(engines, "POSTGRES_LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(transactions, "TRANSACTION_ATTEMPTS", 3)


@pytest.mark.usefixtures("impatient")
def test_a_sqlite_lock_that_outlasts_the_retries_is_reported_as_transient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    url = f"sqlite:///{path}"
    folder = snapshot_folder(tmp_path)
    half = len(STREAM.registrations) // 2
    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
    registry.start()
    replay(registry, STREAM, 0, half)
    assert_all_processed(registry)
    before = database_rows(url)
    files = sorted(folder.iterdir())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held by someone else
    try:
        caplog.set_level(logging.WARNING)
        with pytest.raises(TransientDatabaseError, match="3 times") as refused:
            register_or_raise(registry, *STREAM.registrations[half])
        assert not isinstance(refused.value, InvalidInputError)
        assert "locked" in str(refused.value)
        retries = retries_logged(caplog)
        assert len(retries) == 2
        assert "attempt 1 of 3" in retries[0] and "attempt 2 of 3" in retries[1]
        assert database_rows(url) == before
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(folder.iterdir()) == files
    # the refused registration was not acknowledged: the caller sends it again
    replay(registry, STREAM, half)
    registry.close()
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


def test_a_brief_sqlite_lock_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 20)
    path = tmp_path / "registry.sqlite"
    url = f"sqlite:///{path}"
    folder = snapshot_folder(tmp_path)
    with SnapshotRegistry(STREAM.config, folder, database_url=url) as registry:
        registry.start()
        replay(registry, STREAM, 0, 3)
        assert_all_processed(registry)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.4, lambda: other.execute("ROLLBACK"))
        release.start()
        with caplog.at_level(logging.WARNING):
            replay(registry, STREAM, 3)
        release.join()
        other.close()
    assert retries_logged(caplog)
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


@pytest.mark.usefixtures("impatient")
def test_the_worker_waits_out_a_lasting_lock_and_keeps_the_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    url = f"sqlite:///{path}"
    folder = snapshot_folder(tmp_path)
    half = len(STREAM.registrations) // 2
    # a heartbeat every 0.5 s: several fall inside the lock below
    registry = SnapshotRegistry(
        STREAM.config, folder, database_url=url, writer_timeout=2.0
    )
    registry.start()
    replay(registry, STREAM, 0, half)
    other = sqlite3.connect(path, isolation_level=None)
    caplog.set_level(logging.WARNING)
    other.execute("BEGIN IMMEDIATE")  # longer than the retries of one heartbeat
    deadline = time.monotonic() + 30
    while not any("writer lease" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no heartbeat failed"
        time.sleep(0.05)
    time.sleep(1.0)  # the worker retries with pauses meanwhile
    other.execute("ROLLBACK")
    other.close()
    assert registry.is_alive()
    replay(registry, STREAM, half)  # the lease is still this registry's
    registry.close()  # no WorkerError
    giving_up = [r for r in caplog.records if "writer lease" in r.getMessage()]
    assert giving_up and all(r.levelno == logging.WARNING for r in giving_up)
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


# --------------------------------------------------- transient errors: PostgreSQL


def admin_engine(url: str) -> Any:
    return create_engine(make_url(url), isolation_level="AUTOCOMMIT")


@pytest.mark.postgres
@pytest.mark.usefixtures("impatient")
def test_a_postgresql_lock_that_outlasts_the_retries_is_reported_as_transient(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = snapshot_folder(tmp_path)
    registry = SnapshotRegistry(STREAM.config, folder, database_url=postgres_url)
    registry.start()
    half = len(STREAM.registrations) // 2
    replay(registry, STREAM, 0, half)
    assert_all_processed(registry)
    before = database_rows(postgres_url)
    locker = create_engine(make_url(postgres_url)).connect()
    locker.execute(text("LOCK TABLE submission IN ACCESS EXCLUSIVE MODE"))
    try:
        caplog.set_level(logging.WARNING)
        with pytest.raises(TransientDatabaseError, match="lock timeout") as refused:
            register_or_raise(registry, *STREAM.registrations[half])
        assert not isinstance(refused.value, InvalidInputError)
        assert len(retries_logged(caplog)) == 2
    finally:
        locker.rollback()
        locker.close()
    assert database_rows(postgres_url) == before
    replay(registry, STREAM, half)
    registry.close()
    check_campaign(postgres_url, folder, STREAM, tmp_path, campaign_of(STREAM))


FAILURE_INJECTION = """
CREATE SEQUENCE injected_{name};
CREATE FUNCTION inject_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- sequences ignore rollbacks: the n-th statement fails, retried or not
    IF {condition} THEN
        RAISE EXCEPTION 'injected {name}' USING ERRCODE = '{sqlstate}';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER inject_{name} BEFORE INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION inject_{name}();
"""


def inject_failures(
    url: str, name: str, table: str, sqlstate: str, failing: tuple[int, ...] | None
) -> None:
    """Make the n-th insert statements into a table fail with a SQLSTATE.

    Args:
        url: The database.
        name: Names the trigger, and appears in the error message.
        table: Whose inserts fail.
        sqlstate: The error code.
        failing: Which statements fail, counting from 1; None: all of them.
    """
    condition = (
        "true"
        if failing is None
        else f"nextval('injected_{name}') IN ({', '.join(map(str, failing))})"
    )
    engine = admin_engine(url)
    with engine.connect() as connection:
        connection.exec_driver_sql(
            FAILURE_INJECTION.format(
                name=name, table=table, sqlstate=sqlstate, condition=condition
            )
        )
    engine.dispose()


@pytest.mark.postgres
def test_serialization_failures_and_deadlocks_are_retried(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = snapshot_folder(tmp_path)
    # in the middle of a registration, after its node, edges and workflow
    # snapshot rows: the retry must start again from the graph as committed
    inject_failures(
        postgres_url,
        "serialization_failure",
        "workflow_snapshot_member",
        "40001",
        failing=(2, 5, 6, 11, 23),
    )
    inject_failures(postgres_url, "deadlock", "submission", "40P01", (2, 3, 9, 20))
    with (
        caplog.at_level(logging.WARNING),
        SnapshotRegistry(STREAM.config, folder, database_url=postgres_url) as registry,
    ):
        registry.start()
        replay(registry, STREAM)
    retries = retries_logged(caplog)
    assert any("injected serialization_failure" in retry for retry in retries)
    assert any("injected deadlock" in retry for retry in retries)
    check_campaign(postgres_url, folder, STREAM, tmp_path, campaign_of(STREAM))


@pytest.mark.postgres
@pytest.mark.usefixtures("impatient")
def test_failures_that_persist_or_are_not_transient_are_not_retried_forever(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SnapshotRegistry(STREAM.config, None, database_url=postgres_url) as registry:
        replay(registry, STREAM, 0, 2)
        before = database_rows(postgres_url)
        inject_failures(postgres_url, "always", "submission", "40001", None)
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(TransientDatabaseError, match="injected always"),
        ):
            register_or_raise(registry, *STREAM.registrations[2])
        assert len(retries_logged(caplog)) == 2
        assert database_rows(postgres_url) == before
        caplog.clear()
        engine = admin_engine(postgres_url)
        with engine.connect() as connection:
            connection.exec_driver_sql("DROP TRIGGER inject_always ON submission")
        engine.dispose()
        inject_failures(postgres_url, "check", "submission", "23514", None)
        caplog.set_level(logging.WARNING)
        with pytest.raises(DatabaseRefusedError, match="injected check") as refused:
            register_or_raise(registry, *STREAM.registrations[2])
        assert not isinstance(
            refused.value, (TransientDatabaseError, InvalidInputError)
        )
        assert isinstance(refused.value.__cause__, DBAPIError)  # nothing hidden
        assert retries_logged(caplog) == []
        assert database_rows(postgres_url) == before
        engine = admin_engine(postgres_url)
        with engine.connect() as connection:
            connection.exec_driver_sql("DROP TRIGGER inject_check ON submission")
        engine.dispose()
        # the server's disk is full: SQLSTATE 53100, raised by the server itself
        inject_failures(postgres_url, "disk_full", "snapshot_node", "53100", None)
        with pytest.raises(StorageFullError, match="the disk is full"):
            registry.add_snapshot(*STREAM.registrations[2])
        assert retries_logged(caplog) == []
        assert database_rows(postgres_url) == before


def terminate_other_sessions(url: str) -> int:
    """pg_terminate_backend every other session of the database; how many."""
    engine = admin_engine(url)
    with engine.connect() as connection:
        terminated = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    engine.dispose()
    return int(terminated)


@pytest.mark.postgres
def test_terminated_sessions_between_registrations_lose_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    folder = snapshot_folder(tmp_path)
    third = len(STREAM.registrations) // 3
    with SnapshotRegistry(STREAM.config, folder, database_url=postgres_url) as registry:
        registry.start()
        replay(registry, STREAM, 0, third)
        assert_all_processed(registry)
        assert terminate_other_sessions(postgres_url) >= 1
        replay(registry, STREAM, third, 2 * third)
        # and again: the registry's kept connection is among the terminated
        assert terminate_other_sessions(postgres_url) >= 1
        replay(registry, STREAM, 2 * third)
    check_campaign(postgres_url, folder, STREAM, tmp_path, campaign_of(STREAM))


SLOW_NODE_INSERT = """
CREATE TABLE fault_control (armed boolean NOT NULL);
INSERT INTO fault_control VALUES (false);
CREATE FUNCTION slow_when_armed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT armed FROM fault_control) THEN
        PERFORM pg_sleep(30);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_when_armed BEFORE INSERT ON snapshot_node
    FOR EACH STATEMENT EXECUTE FUNCTION slow_when_armed();
"""


@pytest.mark.postgres
def test_a_connection_dropped_in_the_middle_of_a_registration_is_retried(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = snapshot_folder(tmp_path)
    engine = admin_engine(postgres_url)
    with engine.connect() as connection:
        connection.exec_driver_sql(SLOW_NODE_INSERT)
    half = len(STREAM.registrations) // 2
    with (
        caplog.at_level(logging.WARNING),
        SnapshotRegistry(STREAM.config, folder, database_url=postgres_url) as registry,
    ):
        registry.start()
        replay(registry, STREAM, 0, half)
        assert_all_processed(registry)
        with engine.connect() as connection:
            connection.exec_driver_sql("UPDATE fault_control SET armed = true")
        # the registration hangs inside its transaction
        hanging = threading.Thread(
            target=replay, args=(registry, STREAM, half, half + 1)
        )
        hanging.start()
        deadline = time.monotonic() + 30
        with engine.connect() as connection:
            while True:
                sleeping = (
                    connection.execute(
                        text(
                            "SELECT pid FROM pg_stat_activity WHERE wait_event ="
                            " 'PgSleep' AND datname = current_database()"
                        )
                    )
                    .scalars()
                    .all()
                )
                if sleeping:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.01)
            connection.exec_driver_sql("UPDATE fault_control SET armed = false")
            connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": sleeping[0]}
            )
        hanging.join(timeout=60)
        assert not hanging.is_alive()
        replay(registry, STREAM, half + 1)
    engine.dispose()
    # the server's reason when the dropped statement was awaited alone; the
    # closed socket when it was one of a batch's statements sent in a pipeline
    # (libpq then reads no reason)
    assert any(
        "terminating connection" in retry or "server closed the connection" in retry
        for retry in retries_logged(caplog)
    )
    check_campaign(postgres_url, folder, STREAM, tmp_path, campaign_of(STREAM))


class CommitCuttingProxy:
    """A TCP proxy to PostgreSQL that can lose the answer to one COMMIT.

    The COMMIT reaches the server and is carried out; the client only sees its
    connection break. This is the one outcome a retry cannot tell from a
    failure: the transaction did commit.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cut_next_commit = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(
                target=self._pump, args=(client, server), daemon=True
            ).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    server.sendall(data)
                    if self.cut_next_commit.is_set() and b"COMMIT\x00" in data:
                        self.cut_next_commit.clear()
                        time.sleep(0.3)  # the server commits meanwhile
                        self.cuts += 1
                        return
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


@pytest.fixture
def commit_cutting_url(postgres_url: str) -> Iterator[tuple[str, CommitCuttingProxy]]:
    """The test database, reached through a :class:`CommitCuttingProxy`."""
    parsed = make_url(postgres_url)
    proxy = CommitCuttingProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    try:
        yield (
            parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            ),
            proxy,
        )
    finally:
        proxy.close()


@pytest.mark.postgres
def test_a_lost_commit_answer_does_not_duplicate_a_submission(
    commit_cutting_url: tuple[str, CommitCuttingProxy], postgres_url: str
) -> None:
    url, proxy = commit_cutting_url
    with SnapshotRegistry(STREAM.config, None, database_url=url) as registry:
        replay(registry, STREAM, 0, 3)
        proxy.cut_next_commit.set()
        assert registry.register_snapshot(*STREAM.registrations[3]) is True
        assert proxy.cuts == 1
    engine = inspection_engine(postgres_url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM submission")).scalar()
    engine.dispose()
    assert stored == 4


@pytest.mark.postgres
def test_a_lost_commit_answer_does_not_break_processing(
    commit_cutting_url: tuple[str, CommitCuttingProxy], tmp_path: Path
) -> None:
    url, proxy = commit_cutting_url
    folder = snapshot_folder(tmp_path)
    # the first registration after the third that completes a workflow snapshot
    with SnapshotRegistry(STREAM.config, None) as in_memory:
        completing = next(
            index
            for index, registration in enumerate(STREAM.registrations)
            if in_memory.add_snapshot(*registration) and index > 3
        )
    with SnapshotRegistry(STREAM.config, folder, database_url=url) as registry:
        registry.start()
        replay(registry, STREAM, 0, completing)
        # its COMMIT (submission, node, edges, workflow snapshot) loses its answer
        proxy.cut_next_commit.set()
        replay(registry, STREAM, completing, completing + 1)
        assert proxy.cuts == 1
        replay(registry, STREAM, completing + 1)
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


# ------------------------------------------- a PostgreSQL server that restarts


def _postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivateServer:
    """A PostgreSQL server of our own, in a temporary folder, on a free port."""

    def __init__(self, root: Path) -> None:
        binaries = _postgres_binaries()
        assert binaries is not None
        self.binaries = binaries
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        # initdb refuses to run as root: run the server as the postgres user
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:
            self.user_prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *arguments: str) -> None:
        subprocess.run(
            [*self.user_prefix, str(self.binaries / tool), *arguments],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return (
            make_url(self.admin_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivateServer]:
    """A private server that a test may stop and start; never the shared one."""
    if _postgres_binaries() is None:
        message = "initdb is not installed: cannot start a private PostgreSQL server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    # not under pytest's temporary folder: that one is private to its owner, and
    # the server runs as the postgres user when the tests run as root
    server = PrivateServer(Path(tempfile.mkdtemp(prefix="snapreg-private-postgres-")))
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.mark.slow  # starts, stops and restarts a PostgreSQL server
@pytest.mark.postgres
def test_a_restarted_server_loses_nothing_acknowledged(
    private_postgres: PrivateServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING)
    # about 11 s of patience instead of 5: a restart on a busy machine can be slow
    monkeypatch.setattr(transactions, "TRANSACTION_ATTEMPTS", 11)
    stream = macro_micro(22, num_micro=3, num_steps=25)
    url = private_postgres.create_database("restarted")
    folder = snapshot_folder(tmp_path)
    total = len(stream.registrations)
    acknowledged: list[int] = []
    refused: list[BaseException] = []
    registry = SnapshotRegistry(stream.config, folder, database_url=url)
    registry.start()

    def instances() -> None:
        for index, (instance, metadata) in enumerate(stream.registrations):
            try:
                register_or_raise(registry, instance, metadata)
            except BaseException as err:  # noqa: BLE001 - reported below
                refused.append(err)
                return
            acknowledged.append(index)

    sender = threading.Thread(target=instances)
    sender.start()
    for fraction in (3, 2):
        while len(acknowledged) < total // fraction and sender.is_alive():
            time.sleep(0.005)
        if fraction == 3:
            private_postgres.stop("fast")  # in the middle of a registration
            private_postgres.start()
        else:
            private_postgres.stop("immediate")  # as in a crash of the server
            time.sleep(0.5)
            private_postgres.start()
    sender.join(timeout=120)
    assert refused == []
    assert len(acknowledged) == total
    registry.close()  # raises WorkerError if the worker gave up meanwhile
    # the restarts did interrupt registrations, and were ridden out by retries
    assert retries_logged(caplog)
    check_campaign(url, folder, stream, tmp_path, campaign_of(stream))


# ------------------------------------------------ one writer per run, processes

HOLDER = textwrap.dedent(
    """
    import pickle, sys, time
    from snapreg import SnapshotRegistry
    url, folder, stream_file, campaign, timeout = sys.argv[1:6]
    with open(stream_file, "rb") as stream_input:
        stream = pickle.load(stream_input)
    registry = SnapshotRegistry(
        stream.config, folder, database_url=url, campaign=campaign,
        writer_timeout=float(timeout),
    )
    registry.start()
    print("open", flush=True)
    for line in sys.stdin:
        command, *arguments = line.split()
        try:
            if command == "register":
                for index in range(int(arguments[0]), int(arguments[1])):
                    if not registry.register_snapshot(*stream.registrations[index]):
                        raise registry.refusals[-1].error
                while registry.pending_count():
                    time.sleep(0.01)
                print("ok", flush=True)
            elif command == "close":
                registry.close()
                print("ok", flush=True)
                break
        except Exception as err:
            print("refused", type(err).__name__, str(err).replace("\\n", " "),
                  flush=True)
    """
)


class Holder:
    """Another process that opens a run and registers on command."""

    def __init__(
        self,
        url: str,
        folder: Path,
        stream: Stream,
        tmp_path: Path,
        *,
        campaign: str | None = None,
        writer_timeout: float = 60.0,
    ) -> None:
        stream_file = tmp_path / f"stream-{id(self)}.pickle"
        stream_file.write_bytes(pickle.dumps(stream))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                url,
                str(folder),
                str(stream_file),
                campaign or campaign_of(stream),
                str(writer_timeout),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )
        assert self.answer() == "open"

    @property
    def pid(self) -> int:
        return self.process.pid

    def answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the holder exited with {self.process.wait()}"
        return line.strip()

    def command(self, *words: object) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def set_lease(url: str, **values: Any) -> None:
    """Write the run's writer lease directly, as another machine would have."""
    engine = inspection_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE run SET writer_host = :host, writer_pid = :pid,"
                " writer_token = :token, writer_since = :since,"
                " writer_heartbeat_at = :heartbeat"
            ),
            values,
        )
    engine.dispose()


@pytest.mark.slow  # a writer in a child process
def test_a_second_writer_in_another_process_is_refused_at_once(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    third = len(STREAM.registrations) // 3
    holder = Holder(url, folder, STREAM, tmp_path)
    try:
        assert holder.command("register", 0, third) == "ok"
        before = database_rows(url)
        began = time.monotonic()
        with pytest.raises(WriterConflictError) as refused:
            SnapshotRegistry(STREAM.config, folder, database_url=url)
        assert time.monotonic() - began < 5
        message = str(refused.value)
        assert f"pid {holder.pid} on {os.uname().nodename}" in message
        assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", message)
        assert database_rows(url) == before
        assert holder.command("register", third, 2 * third) == "ok"
        assert holder.command("close") == "ok"
    finally:
        holder.close()
    with SnapshotRegistry(STREAM.config, folder, database_url=url) as registry:
        registry.start()
        replay(registry, STREAM, 2 * third)
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


def test_a_holder_on_another_machine_is_taken_over_once_it_is_gone(
    persistent_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = persistent_database_url
    postgres = not url.startswith("sqlite")
    folder = snapshot_folder(tmp_path)
    half = len(STREAM.registrations) // 2
    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
    replay(registry, STREAM, 0, half)  # stored; the next writer goes on from here
    run_id = registry.run_id
    registry.close()
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    set_lease(
        url,
        host="compute-node-17",
        pid=4242,
        token="f" * 32,
        since=since,
        heartbeat=datetime.now(timezone.utc),
    )
    before = database_rows(url)
    # PostgreSQL: the other machine's writer session holds the run's lock
    with run_lock_held(url, run_id) if postgres else contextlib.nullcontext():
        # a fresh heartbeat: refused (with room to spare on a slow, busy machine)
        with pytest.raises(WriterConflictError) as refused:
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, writer_timeout=30.0
            )
        assert "pid 4242 on compute-node-17 since 2026-01-02 03:04:05 UTC" in str(
            refused.value
        )
        assert database_rows(url) == before
        # the holder falls silent: its last heartbeat is older than the timeout
        age_heartbeats(url, 31)
        if postgres:  # but as long as its session lives, the run is its own
            with pytest.raises(WriterConflictError, match="compute-node-17"):
                SnapshotRegistry(
                    STREAM.config, folder, database_url=url, writer_timeout=30.0
                )
    # PostgreSQL: its session has ended
    with (
        caplog.at_level(logging.WARNING),
        SnapshotRegistry(
            STREAM.config, folder, database_url=url, writer_timeout=30.0
        ) as registry,
    ):
        registry.start()
        replay(registry, STREAM, half)
    gone = "database session is gone" if postgres else "heartbeat too old"
    assert any(gone in record.getMessage() for record in caplog.records)
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


def _holder_is_idle(url: str, holder: Holder) -> bool:
    """Whether the (stopped) holder is outside any transaction."""
    if url.startswith("sqlite"):
        probe = sqlite3.connect(make_url(url).database or "", timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
    engine = inspection_engine(url)
    with engine.connect() as connection:
        busy = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                " current_database() AND pid <> pg_backend_pid()"
                " AND state <> 'idle'"
            )
        ).scalar_one()
    engine.dispose()
    return busy == 0


@pytest.mark.slow  # stops a child process
def test_a_frozen_holder_is_taken_over_once_gone_and_then_refused(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    third = len(STREAM.registrations) // 3
    holder = Holder(url, folder, STREAM, tmp_path, writer_timeout=30.0)
    try:
        assert holder.command("register", 0, third) == "ok"
        while True:  # freeze it, but not in the middle of a heartbeat
            os.kill(holder.pid, signal.SIGSTOP)
            if _holder_is_idle(url, holder):
                break
            os.kill(holder.pid, signal.SIGCONT)
            time.sleep(0.05)
        # silent for longer than the timeout, by the database's clock
        age_heartbeats(url, 60)
        if not url.startswith("sqlite"):
            # its session still holds the run: refused, however old the heartbeat
            with pytest.raises(WriterConflictError) as refused:
                SnapshotRegistry(
                    STREAM.config, folder, database_url=url, writer_timeout=30.0
                )
            assert f"pid {holder.pid} on {os.uname().nodename}" in str(refused.value)
            # until that session ends (as it would when its connection is lost)
            backend = lock_holder(url, run_id_of(url, campaign_of(STREAM)))
            assert backend is not None
            end_session(url, backend)
        with SnapshotRegistry(
            STREAM.config, folder, database_url=url, writer_timeout=30.0
        ) as registry:
            registry.start()
            replay(registry, STREAM, third, 2 * third)
            assert_all_processed(registry)
            os.kill(holder.pid, signal.SIGCONT)
            # the old holder wakes up and must not write a thing
            answer = holder.command("register", 2 * third, 2 * third + 1)
            assert answer.startswith("refused WriterConflictError"), answer
            assert "taken over" in answer
            replay(registry, STREAM, 2 * third)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.close()
    check_campaign(url, folder, STREAM, tmp_path, campaign_of(STREAM))


@pytest.mark.slow  # writers in child processes
def test_two_campaigns_side_by_side_in_two_processes(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    streams = {
        "left": macro_micro(31, num_micro=3, num_steps=12),
        "right": chain(32, length=4, num_steps=20, multiplicity=2),
    }
    folders = {name: snapshot_folder(tmp_path / name) for name in streams}
    holders = {
        name: Holder(url, folders[name], stream, tmp_path, campaign=name)
        for name, stream in streams.items()
    }
    try:
        # both write at the same time
        for name, holder in holders.items():
            assert holder.process.stdin is not None
            holder.process.stdin.write(
                f"register 0 {len(streams[name].registrations)}\n"
            )
            holder.process.stdin.flush()
        for holder in holders.values():
            assert holder.answer() == "ok"
        for holder in holders.values():
            assert holder.command("close") == "ok"
    finally:
        for holder in holders.values():
            holder.close()
    for name, stream in streams.items():
        check_campaign(url, folders[name], stream, tmp_path, name)
