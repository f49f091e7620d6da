"""Writers of a run: processes that open it at the same instant, and lease helpers.

Each opener is a separate process (from a fork server that has imported snapreg,
so that none is slowed down by imports). All of them wait at one barrier and then
construct a :class:`snapreg.SnapshotRegistry` at once. Each reports what happened:
``("open", pid, run number)``, ``("conflict", pid, message)`` for a
:class:`snapreg.WriterConflictError`, or ``("error", pid, text)`` for anything
else. An opener that got the run then waits for a command: ``"register"`` replays
the campaign's registrations through ``register_snapshot`` and closes, ``"close"``
closes at once. Either way it reports ``("closed", pid, "")``.

The lease helpers change a run's lease as time or another machine would: age the
heartbeat by the database's own clock, find or end the database session that holds
a run on PostgreSQL, or hold a run's lock from a session of the test's own.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import text

from snapreg import SnapshotRegistry, WriterConflictError
from snapreg.storage.locks import writer_lock_holder, writer_lock_key
from snapreg.storage.transactions import host_and_pid

from .entries import register_or_raise
from .streams import Stream
from .torture import inspection_engine

#: Seconds to wait for every opener to report.
REPORT_TIMEOUT = 120.0


@dataclass(frozen=True)
class OpenerJob:
    """What every opener of one trial opens, and how."""

    url: str
    folder: str | None
    stream_file: str
    campaign: str
    new_run: bool = False


def open_at_once(job: OpenerJob, barrier: Any, channel: Connection) -> None:
    """Open the run when every opener is ready; report; obey the parent."""
    with open(job.stream_file, "rb") as stream_input:
        stream: Stream = pickle.load(stream_input)
    pid = os.getpid()
    barrier.wait()
    try:
        registry = SnapshotRegistry(
            stream.config,
            job.folder,
            database_url=job.url,
            campaign=job.campaign,
            new_run=job.new_run,
        )
    except WriterConflictError as err:
        channel.send(("conflict", pid, str(err)))
        return
    except Exception:  # noqa: BLE001 - the parent reports whatever went wrong
        channel.send(("error", pid, traceback.format_exc()))
        return
    channel.send(("open", pid, registry.run_number))
    try:
        command = channel.recv()
    except EOFError:  # the parent gave up on this trial
        registry.close()
        return
    try:
        if command == "register":
            registry.start()
            for instance, metadata in stream.registrations:
                register_or_raise(registry, instance, metadata)
        registry.close()
    except Exception:  # noqa: BLE001
        channel.send(("error", pid, traceback.format_exc()))
        return
    channel.send(("closed", pid, ""))


@dataclass
class Trial:
    """The openers of one trial and what each reported."""

    processes: list[Any] = field(default_factory=list)
    channels: list[Connection] = field(default_factory=list)
    reports: list[tuple[str, int, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[tuple[str, int, Any]]:
        """The reports of one kind."""
        return [report for report in self.reports if report[0] == kind]

    def command(self, pid: int, command: str) -> tuple[str, int, Any]:
        """Send a command to the opener with this pid; return its next report."""
        for process, channel in zip(self.processes, self.channels, strict=True):
            if process.pid == pid:
                channel.send(command)
                if not channel.poll(REPORT_TIMEOUT):
                    raise TimeoutError(f"opener {pid} did not answer {command!r}")
                report: tuple[str, int, Any] = channel.recv()
                return report
        raise KeyError(pid)

    def finish(self) -> None:
        """Wait for every opener to end; kill any that does not.

        The channels are closed first: an opener still waiting for a command
        (its trial failed before telling it) then ends at once instead of
        after ``REPORT_TIMEOUT``.
        """
        for channel in self.channels:
            channel.close()
        for process in self.processes:
            process.join(timeout=REPORT_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()


def context() -> Any:
    """A fork server context whose children have snapreg imported already."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["support.writers"])
    return forkserver


def start_openers(job: OpenerJob, count: int) -> Trial:
    """Start ``count`` openers of ``job`` and collect their first reports."""
    fork = context()
    barrier = fork.Barrier(count)
    trial = Trial()
    for _ in range(count):
        receiver, sender = fork.Pipe()
        process = fork.Process(
            target=open_at_once, args=(job, barrier, sender), daemon=True
        )
        process.start()
        trial.processes.append(process)
        trial.channels.append(receiver)
    for process, channel in zip(trial.processes, trial.channels, strict=True):
        if not channel.poll(REPORT_TIMEOUT):
            trial.finish()
            raise TimeoutError(f"opener {process.pid} did not report")
        trial.reports.append(channel.recv())
    return trial


def save_stream(stream: Stream, path: Path) -> str:
    """Pickle a stream for the openers; return the file's name."""
    path.write_bytes(pickle.dumps(stream))
    return str(path)


# ------------------------------------------------------------------ lease helpers


def run_id_of(url: str, campaign: str, number: int = 1) -> int:
    """The row id of a campaign's run."""
    engine = inspection_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT r.id FROM run r JOIN campaign c ON c.id = r.campaign_id"
                        " WHERE c.name = :campaign AND r.number = :number"
                    ),
                    {"campaign": campaign, "number": number},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def leave_to_a_dead_process(url: str, campaign: str, number: int | None = None) -> None:
    """Write the lease of the campaign's runs (or of run ``number``) as a process
    that died on this host left it.

    Its heartbeat is fresh (in the future, even): only the holder's absence (no
    process, no database session) tells that it is gone.
    """
    engine = inspection_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE run SET writer_host = :host, writer_pid = :pid,"
                " writer_token = :token, writer_since = :now,"
                " writer_heartbeat_at = :now"
                " WHERE campaign_id = (SELECT id FROM campaign WHERE name = :campaign)"
                + ("" if number is None else " AND number = :number")
            ),
            {
                "host": host_and_pid()[0],
                "pid": dead_pid(),
                "token": "d" * 32,
                "campaign": campaign,
                "number": number,
                "now": "2999-01-01 00:00:00",
            },
        )
    engine.dispose()


def dead_pid() -> int:
    """A pid no process has on this host."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def age_heartbeats(url: str, seconds: float) -> None:
    """Make every held run's last heartbeat ``seconds`` old by the database's clock."""
    engine = inspection_engine(url)
    if engine.dialect.name == "postgresql":
        then = "now() - make_interval(secs => :seconds)"
    else:
        then = "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || :seconds || ' seconds')"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"UPDATE run SET writer_heartbeat_at = {then}"
                    " WHERE writer_token IS NOT NULL"
                ),
                {"seconds": seconds},
            )
    finally:
        engine.dispose()


def lock_holder(url: str, run_id: int) -> int | None:
    """PostgreSQL: the server process whose session holds the run's writer lock."""
    engine = inspection_engine(url)
    try:
        with engine.connect() as connection:
            return writer_lock_holder(connection, run_id)
    finally:
        engine.dispose()


def end_session(url: str, backend: int) -> None:
    """PostgreSQL: end a server process's session, and wait until it is gone."""
    engine = inspection_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}
            )
            deadline = time.monotonic() + 30
            while True:
                # a transaction sees pg_stat_activity as it first read it: end
                # it, so that each look is a new one
                connection.commit()
                if not connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": backend},
                ).scalar_one():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server process {backend} did not end")
                time.sleep(0.01)
    finally:
        engine.dispose()


@contextmanager
def run_lock_held(url: str, run_id: int) -> Iterator[None]:
    """PostgreSQL: hold a run's writer lock from a session of our own.

    As the session of a writer on another machine would: the run is that
    writer's for as long as the session lasts.
    """
    space, key = writer_lock_key(run_id)
    engine = inspection_engine(url)
    try:
        with engine.connect() as connection:
            locked = connection.execute(
                text("SELECT pg_try_advisory_lock(:space, :key)"),
                {"space": space, "key": key},
            ).scalar_one()
            assert locked, f"run {run_id} is locked by someone else"
            connection.commit()
            yield
    finally:
        engine.dispose()
