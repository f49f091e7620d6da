"""One writer per run, under a race: simultaneous openers, clocks, lost leases.

Eight processes open the same run at the same instant (a barrier); exactly one may
write it, and every other gets a :class:`WriterConflictError` naming the one that
did. The winner then registers a whole campaign, which must end up exactly as an
uninterrupted replay and as MUSCLE3's registry makes it. Processes that each start
a new run at once all get one, numbered one after the other. Lease times are the
database's: a host whose clock is off neither takes over a live holder nor is
taken over itself. A registry whose run was taken over writes nothing more, on
every path that commits.

How a holder is taken over (a dead process, a stale heartbeat on SQLite, a
PostgreSQL session that ended, but not one that lives) is in ``test_faults.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import snapreg.registry.runs
from snapreg import SnapregError, SnapshotRegistry, WriterConflictError
from snapreg.registry.lease import newest_run_writer
from snapreg.rules.topology import Topology
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools.reader import DatabaseReader
from support.entries import call_entry, register_or_raise
from support.streams import macro_micro
from support.torture import (
    Expected,
    database_rows,
    expected_results,
    inspection_engine,
    stored_registrations,
    verify,
    wait_for_sessions_to_end,
    with_application_name,
)
from support.writers import (
    OpenerJob,
    Trial,
    age_heartbeats,
    end_session,
    leave_to_a_dead_process,
    lock_holder,
    run_id_of,
    save_stream,
    start_openers,
)
from test_faults import Holder, campaign_of, snapshot_folder

STREAM = macro_micro(41, num_micro=3, num_steps=5)
OPENERS = 8
TRIALS = 3
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """What one registry, and MUSCLE3's, make of the stream."""
    return expected_results(STREAM, tmp_path_factory.mktemp("writer-lease-reference"))


def _holder_named(message: str, pid: int) -> bool:
    return f"pid {pid} on {HOST}" in message


def _errors(trial: Trial) -> list[str]:
    return [f"{pid}: {text}" for _, pid, text in trial.of_kind("error")]


def _race_one_run(url: str, folder: Path, tmp_path: Path, campaign: str) -> list[str]:
    """Let OPENERS processes open the campaign's run at once; the winner writes.

    Returns:
        What went wrong.
    """
    job = OpenerJob(
        url, str(folder), save_stream(STREAM, tmp_path / f"{campaign}.pickle"), campaign
    )
    trial = start_openers(job, OPENERS)
    try:
        problems = _errors(trial)
        opened = trial.of_kind("open")
        if len(opened) != 1:
            problems.append(f"{len(opened)} openers got the run: {opened}")
            for _, pid, _ in opened:
                trial.command(pid, "close")
            return problems
        (_, winner, _) = opened[0]
        for _, pid, message in trial.of_kind("conflict"):
            if not _holder_named(message, winner):
                problems.append(f"{pid} was refused without naming {winner}: {message}")
        report = trial.command(winner, "register")
        if report[0] != "closed":
            problems.append(f"the winner failed to register: {report}")
        return problems
    finally:
        trial.finish()


@pytest.mark.slow  # child processes
@pytest.mark.parametrize("run_state", ["new campaign", "ended", "abandoned"])
def test_simultaneous_openers_of_one_run_exactly_one_writes(
    persistent_database_url: str, tmp_path: Path, run_state: str, expected: Expected
) -> None:
    for trial in range(TRIALS):
        url = persistent_database_url
        if url.startswith("sqlite") and run_state == "new campaign":
            # a brand new file: its schema too is created in the race
            url = f"sqlite:///{tmp_path / f'fresh-{trial}.sqlite'}"
        campaign = f"race-{run_state}-{trial}".replace(" ", "-")
        folder = snapshot_folder(tmp_path / campaign)
        if run_state != "new campaign":
            with SnapshotRegistry(
                STREAM.config, folder, database_url=url, campaign=campaign
            ):
                pass
        if run_state == "abandoned":
            leave_to_a_dead_process(url, campaign)

        problems = _race_one_run(url, folder, tmp_path, campaign)

        assert problems == [], f"trial {trial}: {problems}"
        assert verify(url, folder, STREAM, campaign, expected) == [], f"trial {trial}"


@pytest.mark.slow  # child processes
@pytest.mark.postgres
def test_simultaneous_openers_of_a_new_postgresql_database(
    empty_postgres_url: str, tmp_path: Path, expected: Expected
) -> None:
    folder = snapshot_folder(tmp_path)
    problems = _race_one_run(empty_postgres_url, folder, tmp_path, "race")
    assert problems == []
    assert verify(empty_postgres_url, folder, STREAM, "race", expected) == []


@pytest.mark.slow  # child processes
def test_simultaneous_new_runs_are_numbered_one_after_the_other(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    for trial in range(TRIALS):
        campaign = f"new-runs-{trial}"
        job = OpenerJob(
            url,
            None,
            save_stream(STREAM, tmp_path / f"{campaign}.pickle"),
            campaign,
            new_run=True,
        )
        trial_openers = start_openers(job, OPENERS)
        try:
            assert _errors(trial_openers) == []
            opened = trial_openers.of_kind("open")
            assert sorted(number for _, _, number in opened) == list(
                range(1, OPENERS + 1)
            )
            engine = inspection_engine(url)
            with engine.connect() as connection:
                holders = connection.execute(
                    text(
                        "SELECT r.number, r.writer_pid,"
                        " (SELECT count(*) FROM snapshot_node n"
                        "  WHERE n.run_id = r.id AND n.is_restart) AS restarts"
                        " FROM run r JOIN campaign c ON c.id = r.campaign_id"
                        " WHERE c.name = :campaign ORDER BY r.number"
                    ),
                    {"campaign": campaign},
                ).all()
            engine.dispose()
            # each run written by the process that was told its number
            assert [(row.number, row.writer_pid) for row in holders] == sorted(
                (number, pid) for _, pid, number in opened
            )
            instances = len(Topology.from_configuration(STREAM.config).instances)
            assert {row.restarts for row in holders} == {instances}
            for _, pid, _ in opened:
                assert trial_openers.command(pid, "close")[0] == "closed"
        finally:
            trial_openers.finish()


SLOW_COMMIT = (
    "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON submission"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
)


@pytest.mark.slow  # kills a child process
@pytest.mark.postgres
def test_a_takeover_right_after_a_kill_comes_after_the_dead_holder_s_last_commit(
    postgres_url: str, tmp_path: Path, expected: Expected
) -> None:
    url = postgres_url
    folder = snapshot_folder(tmp_path)
    campaign = campaign_of(STREAM)
    total = len(STREAM.registrations)
    rng = random.Random(1207)
    engine = inspection_engine(url)
    # every COMMIT of a registration takes the server 0.2 s: a holder killed
    # meanwhile has a commit in flight that lands after its process is gone
    with engine.begin() as connection:
        for statement in SLOW_COMMIT:
            connection.execute(text(statement))
    start = 0
    try:
        for kill in range(4):
            name = f"snapreg-dead-holder-{os.getpid()}-{kill}"
            holder = Holder(with_application_name(url, name), folder, STREAM, tmp_path)
            assert holder.process.stdin is not None
            holder.process.stdin.write(f"register {start} {total}\n")
            holder.process.stdin.flush()
            time.sleep(rng.uniform(0.3, 0.6))  # in the middle of registering
            holder.close()  # SIGKILL
            # open the run at once: refused as long as the dead holder's session
            # lives, which is as long as its last COMMIT may still land
            deadline = time.monotonic() + 60
            while True:
                try:
                    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
                    break
                except WriterConflictError:
                    assert time.monotonic() < deadline, "never taken over"
                    time.sleep(0.005)
            try:
                stored = stored_registrations(engine, campaign)
                wait_for_sessions_to_end(engine, name)
                assert stored_registrations(engine, campaign) == stored, (
                    f"kill {kill}: a commit of the dead holder landed after the"
                    " takeover"
                )
            finally:
                registry.close()
            assert start < stored < total
            start = stored
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER slow_commit ON submission"))
    finally:
        engine.dispose()
    with SnapshotRegistry(STREAM.config, folder, database_url=url) as registry:
        for instance, metadata in STREAM.registrations[start:]:
            registry.register_snapshot(instance, metadata)
    assert verify(url, folder, STREAM, campaign, expected) == []


# ------------------------------------------------------------------ clocks


@contextmanager
def python_clock_off_by(
    monkeypatch: pytest.MonkeyPatch, offset: timedelta
) -> Iterator[None]:
    """Run the block as on a host whose clock is ``offset`` off."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Skewed:
            moment = datetime.now(tz) + offset
            return cls.fromtimestamp(moment.timestamp(), tz)

    with monkeypatch.context() as patch:
        patch.setattr(snapreg.registry.runs, "datetime", Skewed)
        yield


@pytest.mark.slow  # a holder in a child process
def test_an_opener_whose_clock_runs_ahead_does_not_take_over_a_live_holder(
    persistent_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    holder = Holder(url, folder, STREAM, tmp_path, writer_timeout=30.0)
    try:
        assert holder.command("register", 0, 5) == "ok"
        before = database_rows(url)
        with (
            python_clock_off_by(monkeypatch, timedelta(hours=1)),
            pytest.raises(WriterConflictError) as refused,
        ):
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, writer_timeout=30.0
            )
        assert _holder_named(str(refused.value), holder.pid)
        assert database_rows(url) == before
        assert holder.command("close") == "ok"
    finally:
        holder.close()


def test_a_holder_whose_clock_runs_behind_is_not_taken_over(
    persistent_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    with python_clock_off_by(monkeypatch, -timedelta(hours=1)):
        holder = SnapshotRegistry(
            STREAM.config, folder, database_url=url, writer_timeout=30.0
        )
        for instance, metadata in STREAM.registrations[:5]:
            holder.add_snapshot(instance, metadata)
    try:
        with pytest.raises(WriterConflictError) as refused:
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, writer_timeout=30.0
            )
        assert _holder_named(str(refused.value), os.getpid())
    finally:
        holder.close()


# ------------------------------------------------- whose timeout judges a holder


def test_an_opener_with_a_shorter_timeout_waits_out_the_holder_s_own(
    tmp_path: Path,
) -> None:
    """SQLite: a holder heartbeats on the schedule of its own timeout (every 15 s
    for 60 s); an opener in a hurry must not take it over between two beats."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    folder = snapshot_folder(tmp_path)
    holder = SnapshotRegistry(
        STREAM.config, folder, database_url=url, writer_timeout=60.0
    )
    try:
        for instance, metadata in STREAM.registrations[:5]:
            holder.add_snapshot(instance, metadata)
        age_heartbeats(url, 12)  # between two of its beats, 15 s apart
        before = database_rows(url)
        with pytest.raises(WriterConflictError) as refused:
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, writer_timeout=10.0
            )
        assert _holder_named(str(refused.value), os.getpid())
        assert "taken over 60 s after its last heartbeat" in str(refused.value)
        assert database_rows(url) == before

        age_heartbeats(url, 61)  # silent for longer than it said it could be
        with SnapshotRegistry(
            STREAM.config, folder, database_url=url, writer_timeout=10.0
        ) as successor:
            assert successor.run_id == holder.run_id
    finally:
        with contextlib.suppress(SnapregError):  # it was taken over
            holder.close()


def test_an_opener_with_a_longer_timeout_waits_that_long(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    folder = snapshot_folder(tmp_path)
    holder = SnapshotRegistry(
        STREAM.config, folder, database_url=url, writer_timeout=10.0
    )
    try:
        age_heartbeats(url, 20)
        with pytest.raises(WriterConflictError, match="taken over 30 s after"):
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, writer_timeout=30.0
            )
    finally:
        holder.close()


# ---------------------------------------------- a registry that lost its run


def _take_over_behind_its_back(url: str) -> None:
    """Hand the run to another writer by SQL, as a takeover would have."""
    engine = inspection_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE run SET writer_token = :token, writer_host = 'elsewhere',"
                " writer_pid = 1"
            ),
            {"token": "e" * 32},
        )
    engine.dispose()


@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_a_registry_that_lost_its_run_writes_nothing(
    persistent_database_url: str, tmp_path: Path, entry: str
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    # a long timeout: no heartbeat would be due on the old schedule
    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
    try:
        registry.start()
        for instance, metadata in STREAM.registrations[:5]:
            register_or_raise(registry, instance, metadata)
        _take_over_behind_its_back(url)
        before = database_rows(url)
        files = sorted(folder.iterdir())
        instance, metadata = STREAM.registrations[5]
        with pytest.raises(WriterConflictError, match="taken over"):
            call_entry(registry, entry, instance, metadata)
        assert database_rows(url) == before
        assert sorted(folder.iterdir()) == files
    finally:
        # what close() says of a registry that lost its run is not the point here
        with contextlib.suppress(SnapregError):
            registry.close()


def test_submissions_stored_unprocessed_need_the_run_too(
    persistent_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = persistent_database_url
    folder = snapshot_folder(tmp_path)
    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
    try:
        for instance, metadata in STREAM.registrations[:5]:
            register_or_raise(registry, instance, metadata)
        before = database_rows(url)

        def taken_over_then_failing(*args: Any) -> Any:
            # the run changes hands while this one processes; then processing
            # fails, and the registration would be stored unprocessed instead
            _take_over_behind_its_back(url)
            raise RuntimeError("processing failed")

        monkeypatch.setattr(registry._writer, "_plan", taken_over_then_failing)
        with pytest.raises(WriterConflictError, match="taken over"):
            register_or_raise(registry, *STREAM.registrations[5])
        after = database_rows(url)
        # nothing of the registration: neither its node nor its submission
        assert {name: rows for name, rows in after.items() if name != "run"} == {
            name: rows for name, rows in before.items() if name != "run"
        }
    finally:
        with contextlib.suppress(SnapregError):
            registry.close()


# ------------------------------------------------------- what readers say of it


def _reader_status(url: str) -> str:
    with DatabaseReader(url) as reader:
        (campaign,) = reader.campaigns()
        return campaign.runs[-1].status


def _as_if_written_from_another_host(url: str) -> None:
    """Move the lease to another machine: its process can't be looked up here."""
    engine = inspection_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE run SET writer_host = 'elsewhere.example'"
                    " WHERE writer_token IS NOT NULL"
                )
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("timeout", "silent", "status"),
    [
        (600.0, 120, "running"),
        (600.0, 601, "interrupted"),
        (10.0, 30, "interrupted"),
        (10.0, 5, "running"),
    ],
)
def test_sqlite_readers_judge_a_writer_elsewhere_by_its_own_timeout(
    tmp_path: Path, timeout: float, silent: float, status: str
) -> None:
    """Another host's process cannot be looked up: its heartbeat is all there is,
    and how old it may be is what that writer said, not a fixed minute."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    registry = SnapshotRegistry(
        STREAM.config, tmp_path, database_url=url, writer_timeout=timeout
    )
    try:
        for instance, metadata in STREAM.registrations[:5]:
            registry.add_snapshot(instance, metadata)
        _as_if_written_from_another_host(url)
        age_heartbeats(url, silent)
        assert _reader_status(url) == status
        with ReadOnlyStore(url) as store:
            writer = store.read(
                lambda session: newest_run_writer(session, registry.campaign)
            )
        # --resume-latest refuses exactly while readers say it runs
        assert (writer is not None) == (status == "running")
    finally:
        registry.close()


@pytest.mark.postgres
def test_postgresql_readers_judge_a_run_by_its_writer_lock(
    postgres_url: str, tmp_path: Path
) -> None:
    """Running while the writer's session holds the run's lock, whatever the
    heartbeat says; interrupted once that session is gone, however fresh it is."""
    url = postgres_url
    registry = SnapshotRegistry(STREAM.config, tmp_path, database_url=url)
    try:
        for instance, metadata in STREAM.registrations[:5]:
            registry.add_snapshot(instance, metadata)
        assert _reader_status(url) == "running"
        _as_if_written_from_another_host(url)
        age_heartbeats(url, 3600)
        assert _reader_status(url) == "running"  # the lock is held: it lives

        age_heartbeats(url, 0)
        backend = lock_holder(url, run_id_of(url, registry.campaign))
        assert backend is not None
        end_session(url, backend)  # as when its connection is lost
        assert _reader_status(url) == "interrupted"
    finally:
        with contextlib.suppress(SnapregError):  # its session is gone
            registry.close()
