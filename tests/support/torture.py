"""Crash torture: replay a recorded campaign in child processes killed with SIGKILL.

A campaign (thousands of registrations of a ``macro[M]`` / ``micro[M][N]`` coupling
with vector ports, from :func:`support.streams.macro_micro`) is recorded to a file.
Child processes replay it through ``register_snapshot`` with the registry's worker
thread running, as MUSCLE3's manager does. Every child but the last is killed with
SIGKILL at a random point; the next child reopens the database and continues.

Kill points are of two kinds. *External* kills come from the parent at a random
moment: a few milliseconds after a random acknowledgement (the worker is then
usually in the middle of a registration) or shortly after the child started (while
it opens the run and processes what the previous child left). *Targeted* kills are
the child sending SIGKILL to itself at the n-th occurrence of a moment that random
timing rarely hits: a submission inserted but not committed, a submission committed
but not yet acknowledged, a registration's transaction half done or about to
commit, a commit that created workflow snapshots before their files exist, a
temporary file half written or complete but not renamed. Either way the process
dies at once, exactly as with ``kill -9``.

The child tells the parent which registration it is about to submit and which ones
``register_snapshot`` returned for. After a kill, the parent waits until the child's
database sessions are gone, counts the campaign's submission rows, and so learns
whether the one registration in flight was stored; the next child starts right
after the last stored one. A registration is therefore never submitted twice unless
the registry stores one twice, and never skipped unless it loses one.

At the end, :func:`verify` compares the database and the snapshot folder with an
uninterrupted run of the same registry and with MUSCLE3's own registry (the
oracle), and checks the invariants: every registration stored exactly once and in
order, identical nodes, edges, workflow snapshots and active nodes, no orphan rows,
a file for every workflow snapshot row and a row for every file, and a clean
``PRAGMA integrity_check`` on SQLite.

Command line, from the ``tests`` folder (the suite runs a shorter version)::

    python -m support.torture --kills 500
    python -m support.torture --kills 500 --url postgresql://postgres@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from snapreg import SnapshotRegistry
from snapreg.registry.batch_writer import BatchWriter
from snapreg.registry.files import TEMPORARY_PREFIX
from snapreg.registry.registrations import Registrations
from snapreg.rules.metadata import coerce_metadata
from snapreg.storage.codecs import metadata_to_json
from snapreg.storage.engines import normalize_url
from support.entries import register_or_raise

from .oracle import run_oracle
from .streams import Stream, macro_micro

Member = tuple[str, int]
"""A node as (instance, num)."""

EXTERNAL_POINTS = ("after-ack", "while-opening")
"""Kills the parent delivers at a random moment."""

TARGETED_POINTS = (
    "submission-uncommitted",
    "submission-committed",
    "registration-half-done",
    "registration-before-commit",
    "committed-before-files",
    "file-half-written",
    "file-before-rename",
)
"""Kills the child delivers to itself at the n-th occurrence of a moment."""

KILL_POINTS = EXTERNAL_POINTS + TARGETED_POINTS

_PER_TRANSACTION_POINTS = (
    "registration-half-done",
    "registration-before-commit",
    "committed-before-files",
)

_EVENT_TIMEOUT = 180.0
_BACKEND_GONE_TIMEOUT = 60.0


# ------------------------------------------------------------------ the campaign


@dataclass(frozen=True)
class CampaignSpec:
    """Which campaign to record: a replicated macro-micro coupling.

    ``macro[M]`` drives ``micro[M][N]`` over vector ports; every instance saves a
    snapshot every step, so a step brings ``M * (1 + 2 N)`` registrations.
    """

    seed: int = 2026
    macro_replicas: int = 2
    num_micro: int = 3
    num_steps: int = 150

    def record(self) -> Stream:
        """Simulate the coupling and return its registrations."""
        return macro_micro(
            self.seed,
            num_micro=self.num_micro,
            num_steps=self.num_steps,
            macro_replicas=self.macro_replicas,
        )


def save_campaign(stream: Stream, path: Path) -> None:
    """Record a campaign for the children to replay."""
    path.write_bytes(pickle.dumps(stream))


def load_campaign(path: Path) -> Stream:
    """Read a recorded campaign."""
    stream = pickle.loads(path.read_bytes())
    assert isinstance(stream, Stream)
    return stream


# ------------------------------------------------------------ the child process


@dataclass(frozen=True)
class KillPlan:
    """Where one child dies.

    Attributes:
        point: One of :data:`KILL_POINTS`, or ``"none"`` for the last child.
        after_ack: External kills: the acknowledgement after which to kill (or,
            for targeted kills, the last one to wait for before killing anyway).
        delay: External kills: seconds to wait before killing.
        occurrence: Targeted kills: at which occurrence of the moment to die.
    """

    point: str
    after_ack: int | None = None
    delay: float = 0.0
    occurrence: int = 1


@dataclass(frozen=True)
class ChildJob:
    """What one child process does."""

    url: str
    folder: str
    campaign_file: str
    campaign: str
    start: int
    plan: KillPlan
    log_file: str


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL cannot be caught


class _TargetedKill:
    """Counts occurrences of the planned moment and dies at the chosen one.

    SQLAlchemy's events tell what a transaction does: the tables it inserts into
    (``after_cursor_execute``) and that it is about to commit (``commit``, before
    the driver's commit). That a commit is done shows in what the registry does
    next: it acknowledges the registrations (``Registrations._commit`` returns) and
    writes the files of the workflow snapshots it found
    (``BatchWriter._write_files``). A hook that names a method that is gone fails
    the child at once, never silently.
    """

    def __init__(self, plan: KillPlan) -> None:
        self.plan = plan
        self.seen = 0
        self.lock = threading.Lock()
        self.local = threading.local()

    def arrive(self, point: str) -> None:
        if point != self.plan.point:
            return
        with self.lock:
            self.seen += 1
            if self.seen >= self.plan.occurrence:
                _die()

    def _tables(self, name: str) -> set[str]:
        if not hasattr(self.local, name):
            setattr(self.local, name, set())
        tables: set[str] = getattr(self.local, name)
        return tables

    def install(self) -> None:
        point = self.plan.point
        if point not in TARGETED_POINTS:
            return
        if point.startswith("file-"):
            self._install_file_hook()
            return
        event.listen(Engine, "after_cursor_execute", self._after_execute)
        event.listen(Engine, "commit", self._before_commit)
        event.listen(Engine, "rollback", self._rolled_back)
        self._install_registry_hooks()

    def _after_execute(
        self, conn: Any, cursor: Any, statement: str, *args: Any
    ) -> None:
        words = statement.split(None, 3)
        if len(words) < 3 or words[0].upper() != "INSERT":
            return
        table = words[2].strip('"').lower()
        inserted = self._tables("inserted")
        inserted.add(table)
        if table == "submission":
            self.arrive("submission-uncommitted")
        elif table == "snapshot_node":
            self.arrive("registration-half-done")

    def _before_commit(self, conn: Any) -> None:
        inserted = self._tables("inserted")
        if "snapshot_node" in inserted:
            self.arrive("registration-before-commit")
        inserted.clear()

    def _rolled_back(self, conn: Any) -> None:
        self._tables("inserted").clear()

    def _install_registry_hooks(self) -> None:
        commit = Registrations._commit
        write_files = BatchWriter._write_files

        def committed(registrations: Registrations, batch: list[Any]) -> None:
            commit(registrations, batch)  # returns once committed, or raises
            self.arrive("submission-committed")

        def before_files(writer: BatchWriter, found: list[Any]) -> None:
            if any(item.path is not None for item in found):
                self.arrive("committed-before-files")
            write_files(writer, found)

        Registrations._commit = committed  # type: ignore[method-assign]
        BatchWriter._write_files = before_files  # type: ignore[method-assign]

    def _install_file_hook(self) -> None:
        real_replace = os.replace

        def replace(source: Any, destination: Any, **kwargs: Any) -> None:
            name = os.path.basename(os.fsdecode(destination))
            if name.startswith("snapshot_") and name.endswith(".ymmsl"):
                if self.plan.point == "file-half-written":
                    with self.lock:
                        due = self.seen + 1 >= self.plan.occurrence
                    if due:
                        os.truncate(source, os.path.getsize(source) // 2)
                self.arrive(self.plan.point)
            real_replace(source, destination, **kwargs)

        os.replace = replace  # type: ignore[assignment]


def child_main(job: ChildJob, channel: Connection) -> None:
    """Replay the campaign from ``job.start``; report every step to the parent."""
    log = open(job.log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as we do
    os.dup2(log.fileno(), 2)
    logging.basicConfig(
        stream=log, level=logging.WARNING, format=f"[child {os.getpid()}] %(message)s"
    )
    _TargetedKill(job.plan).install()
    try:
        stream = load_campaign(Path(job.campaign_file))
        channel.send(("opening", os.getpid()))
        registry = SnapshotRegistry(
            stream.config, job.folder, database_url=job.url, campaign=job.campaign
        )
        channel.send(("open", os.getpid()))
        registry.start()
        for index in range(job.start, len(stream.registrations)):
            instance, metadata = stream.registrations[index]
            channel.send(("submit", index))
            register_or_raise(registry, instance, metadata)
            channel.send(("ack", index))
        registry.shutdown()
        registry.join()
        registry.close()
        channel.send(("done", os.getpid()))
    except BaseException:
        channel.send(("error", traceback.format_exc()))
        raise


# -------------------------------------------------------------- the parent side


@dataclass
class Round:
    """One child's life, as the parent saw it."""

    plan: KillPlan
    start: int
    acknowledged: list[int] = field(default_factory=list)
    in_flight: int | None = None
    stored_after: int = 0
    killed: bool = False
    killed_by_parent: bool = False
    finished: bool = False
    exit_code: int | None = None

    @property
    def kill_point(self) -> str:
        """Where the child died; a targeted kill that never came is named so."""
        if self.plan.point in TARGETED_POINTS and self.killed_by_parent:
            return "after-ack (targeted moment did not come)"
        return self.plan.point

    @property
    def in_flight_stored(self) -> bool | None:
        """Whether the registration in flight at the kill was stored."""
        if self.in_flight is None:
            return None
        return self.stored_after > self.in_flight


@dataclass
class TortureReport:
    """What a torture run did and found."""

    database: str
    registrations: int
    rounds: list[Round] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    workflow_snapshots: int = 0

    @property
    def kills(self) -> int:
        """Children killed with SIGKILL."""
        return sum(1 for played in self.rounds if played.killed)

    @property
    def kills_by_point(self) -> dict[str, int]:
        """Kills per kill point."""
        return dict(
            sorted(Counter(r.kill_point for r in self.rounds if r.killed).items())
        )

    @property
    def submissions(self) -> int:
        """Calls of register_snapshot made, re-submissions included."""
        return sum(
            len(r.acknowledged) + (1 if r.in_flight is not None else 0)
            for r in self.rounds
        )

    @property
    def in_flight_outcomes(self) -> dict[str, int]:
        """Registrations in flight at a kill: how many were stored, how many not."""
        outcomes = Counter(
            "stored" if r.in_flight_stored else "not stored"
            for r in self.rounds
            if r.killed and r.in_flight is not None
        )
        return dict(sorted(outcomes.items()))

    def summary(self) -> dict[str, Any]:
        """The figures, as JSON-ready data."""
        return {
            "database": self.database,
            "registrations": self.registrations,
            "register_snapshot_calls": self.submissions,
            "children": len(self.rounds),
            "kills": self.kills,
            "kills_by_point": self.kills_by_point,
            "in_flight_at_kill": self.in_flight_outcomes,
            "workflow_snapshots": self.workflow_snapshots,
            "seconds": round(self.seconds, 1),
            "verify_seconds": round(self.verify_seconds, 1),
            "problems": self.problems,
        }


def with_application_name(url: str, name: str) -> str:
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def inspection_engine(url: str) -> Engine:
    """An engine for the parent's own queries; no pool, so nothing lingers."""
    return create_engine(normalize_url(url), poolclass=NullPool)


def stored_registrations(engine: Engine, campaign: str) -> int:
    """How many submission rows the campaign has (0 before its schema exists)."""
    with engine.connect() as connection:
        has_table = connection.dialect.has_table(connection, "submission")
        if not has_table:
            return 0
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM submission s"
                    " JOIN run r ON r.id = s.run_id"
                    " JOIN campaign c ON c.id = r.campaign_id"
                    " WHERE c.name = :campaign"
                ),
                {"campaign": campaign},
            ).scalar_one()
        )


def wait_for_sessions_to_end(engine: Engine, application_name: str) -> None:
    """On PostgreSQL, wait until the killed child's server sessions are gone.

    A COMMIT the child sent just before it died may still be completing on the
    server; counting rows before it is done would misjudge the registration in
    flight.
    """
    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + _BACKEND_GONE_TIMEOUT
    while True:
        with engine.connect() as connection:
            remaining = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"
                ),
                {"n": application_name},
            ).scalar_one()
        if remaining == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sessions of {application_name} did not end")
        time.sleep(0.01)


def forkserver() -> Any:
    context = multiprocessing.get_context("forkserver")
    # Children fork from a server that has already imported snapreg: a kill point
    # costs milliseconds, not a second of imports.
    context.set_forkserver_preload(["support.torture"])
    return context


def kill_targets(rng: random.Random, total: int, kills: int) -> list[int]:
    """Where the kills aim: registration indices spread evenly at random.

    Sorted, one per kill, and short of the last few registrations so that the
    final child has some left to finish.
    """
    last = max(0, total - 1 - 4)
    return sorted(rng.randint(0, last) for _ in range(kills))


def _choose_plan(
    rng: random.Random, point: str, start: int, target: int | None, total: int
) -> KillPlan:
    if target is None:
        return KillPlan("none")
    if start >= total - 3:
        # so close to the end that a child could finish before its kill
        return KillPlan("while-opening", delay=rng.uniform(0.0, 0.01))
    # a kill that made less progress than planned leaves its target to the next
    target = max(start, target)
    if point == "after-ack":
        return KillPlan(point, after_ack=target, delay=rng.uniform(0.0, 0.02))
    if point == "while-opening":
        return KillPlan(point, delay=rng.uniform(0.0, 0.15))
    # submissions and files come once per registration or more often; the worker
    # may process several registrations in one transaction
    per_moment = 8 if point in _PER_TRANSACTION_POINTS else 2
    occurrence = rng.randint(1, max(1, (target - start + 1) // per_moment))
    return KillPlan(point, after_ack=target + 2, occurrence=occurrence)


def _kill_points(rng: random.Random) -> Iterator[str]:
    """Every kill point in turn, in a new random order each round."""
    while True:
        points = list(KILL_POINTS)
        rng.shuffle(points)
        yield from points


def _play_round(
    context: Any,
    job: ChildJob,
    total: int,
    engine: Engine,
    application_name: str,
) -> Round:
    played = Round(job.plan, job.start)
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=child_main, args=(job, sender), daemon=True)
    child.start()
    sender.close()
    started = time.monotonic()
    kill_sent = False
    kill_at: float | None = None
    if job.plan.point == "while-opening":
        kill_at = started + job.plan.delay
    error = ""
    try:
        while True:
            timeout = _EVENT_TIMEOUT
            if kill_at is not None and not kill_sent:
                timeout = max(0.0, kill_at - time.monotonic())
            if not receiver.poll(timeout):
                if kill_at is not None and not kill_sent:
                    child.kill()
                    kill_sent = True
                    continue
                child.kill()
                raise RuntimeError(f"child {child.pid} went silent: {job}")
            try:
                message = receiver.recv()
            except EOFError:
                break
            kind = message[0]
            if kind == "submit":
                played.in_flight = message[1]
            elif kind == "ack":
                index = message[1]
                if index != played.in_flight:
                    raise RuntimeError(f"ack {index} for submission {played.in_flight}")
                played.acknowledged.append(index)
                played.in_flight = None
                if (
                    job.plan.after_ack is not None
                    and index >= job.plan.after_ack
                    and not kill_sent
                ):
                    if job.plan.point == "after-ack":
                        time.sleep(job.plan.delay)
                    # targeted kills that did not happen by now: kill anyway
                    child.kill()
                    kill_sent = True
            elif kind == "done":
                played.finished = True
            elif kind == "error":
                error = message[1]
    finally:
        receiver.close()
        child.join(timeout=60)
    played.exit_code = child.exitcode
    if error:
        raise RuntimeError(f"child failed ({job.plan}):\n{error}")
    played.killed = child.exitcode == -signal.SIGKILL
    played.killed_by_parent = played.killed and kill_sent
    if played.killed:
        played.finished = False
    elif child.exitcode != 0 or not played.finished:
        raise RuntimeError(f"child exited with {child.exitcode} ({job.plan})")
    wait_for_sessions_to_end(engine, application_name)
    played.stored_after = stored_registrations(engine, job.campaign)
    acknowledged = played.acknowledged[-1] + 1 if played.acknowledged else job.start
    upper = acknowledged + (1 if played.in_flight is not None else 0)
    if not acknowledged <= played.stored_after <= upper:
        raise AssertionError(
            f"after a kill at {job.plan}, {played.stored_after} registrations are"
            f" stored but {acknowledged} were acknowledged"
            + (f" and {played.in_flight} was in flight" if upper > acknowledged else "")
        )
    if played.finished and played.stored_after != total:
        raise AssertionError(f"finished with {played.stored_after} of {total} stored")
    return played


def torture(
    url: str,
    folder: Path,
    stream: Stream,
    *,
    kills: int,
    seed: int,
    campaign: str,
    workdir: Path,
    progress: Callable[[Round], None] | None = None,
) -> TortureReport:
    """Replay the campaign in children, killing all but the last; no checking.

    Args:
        url: Database URL of the registry under test.
        folder: Snapshot folder of the registry under test.
        stream: The campaign.
        kills: How many children to kill.
        seed: Seed of the random kill plans.
        campaign: Campaign name in the database.
        workdir: Where the recorded campaign and the children's logs go.
        progress: Called after each child.

    Returns:
        The rounds played; :func:`verify` checks the result.
    """
    rng = random.Random(seed)
    context = forkserver()
    campaign_file = workdir / "campaign.pickle"
    save_campaign(stream, campaign_file)
    total = len(stream.registrations)
    report = TortureReport(describe(url), total)
    engine = inspection_engine(url)
    began = time.monotonic()
    try:
        start = 0
        points = _kill_points(rng)
        targets = kill_targets(rng, total, kills)
        while True:
            target = targets[report.kills] if report.kills < kills else None
            plan = _choose_plan(rng, next(points), start, target, total)
            application_name = f"snapreg-torture-{os.getpid()}-{len(report.rounds)}"
            job = ChildJob(
                url=with_application_name(url, application_name),
                folder=str(folder),
                campaign_file=str(campaign_file),
                campaign=campaign,
                start=start,
                plan=plan,
                log_file=str(workdir / "children.log"),
            )
            played = _play_round(context, job, total, engine, application_name)
            report.rounds.append(played)
            if progress is not None:
                progress(played)
            if played.finished:
                break
            start = played.stored_after
            if len(report.rounds) > 10 * (kills + 10):
                raise RuntimeError("the campaign does not progress")
    finally:
        engine.dispose()
        report.seconds = time.monotonic() - began
    return report


def describe(url: str) -> str:
    """A URL without its password."""
    return make_url(url).render_as_string(hide_password=True)


# ----------------------------------------------------------------- verification


@dataclass
class CampaignState:
    """A campaign's rows, with ids replaced by what they mean.

    Attributes:
        nodes: (instance, num) to its metadata, restart flag and whether active.
        edges: Consistent pairs as sets of two (instance, num).
        workflow_snapshots: For each node whose registration completed workflow
            snapshots, their member sets, sorted.
        submissions: (instance, stored metadata) in submission order.
    """

    nodes: dict[Member, tuple[Any, ...]]
    edges: set[frozenset[Member]]
    workflow_snapshots: dict[Member, list[tuple[Member, ...]]]
    submissions: list[tuple[str, Any]]


def read_state(engine: Engine, campaign: str) -> CampaignState:
    """Read one campaign's single run from the database, by plain SQL."""
    with engine.connect() as connection:
        run_ids = (
            connection.execute(
                text(
                    "SELECT r.id FROM run r JOIN campaign c ON c.id = r.campaign_id"
                    " WHERE c.name = :campaign"
                ),
                {"campaign": campaign},
            )
            .scalars()
            .all()
        )
        if len(run_ids) != 1:
            raise AssertionError(f"campaign {campaign!r} has {len(run_ids)} runs")
        run = {"run": run_ids[0]}
        node_rows = connection.execute(
            text(
                "SELECT id, instance, num, is_restart, triggers, wallclock_time,"
                " simulation_time, next_simulation_time, port_message_counts,"
                " is_final, snapshot_filename, retired_at IS NULL AS active"
                " FROM snapshot_node WHERE run_id = :run"
            ),
            run,
        ).all()
        by_id = {row.id: (row.instance, row.num) for row in node_rows}
        nodes = {
            (row.instance, row.num): (
                bool(row.is_restart),
                _json(row.triggers),
                row.wallclock_time,
                row.simulation_time,
                row.next_simulation_time,
                _json(row.port_message_counts),
                bool(row.is_final),
                row.snapshot_filename,
                bool(row.active),
            )
            for row in node_rows
        }
        edge_rows = connection.execute(
            text(
                "SELECT p.lower_node_id, p.higher_node_id FROM consistent_pair p"
                " JOIN snapshot_node n ON n.id = p.lower_node_id"
                " WHERE n.run_id = :run"
            ),
            run,
        ).all()
        edges = {
            frozenset((by_id[row.lower_node_id], by_id[row.higher_node_id]))
            for row in edge_rows
        }
        member_rows = connection.execute(
            text(
                "SELECT m.workflow_snapshot_id, m.snapshot_node_id"
                " FROM workflow_snapshot_member m"
                " JOIN workflow_snapshot w ON w.id = m.workflow_snapshot_id"
                " WHERE w.run_id = :run"
            ),
            run,
        ).all()
        members: dict[int, list[int]] = {}
        for row in member_rows:
            members.setdefault(row.workflow_snapshot_id, []).append(
                row.snapshot_node_id
            )
        workflow_snapshots: dict[Member, list[tuple[Member, ...]]] = {}
        for node_ids in members.values():
            # the newest member is the registration that completed it
            completed_by = by_id[max(node_ids)]
            workflow_snapshots.setdefault(completed_by, []).append(
                tuple(sorted(by_id[node_id] for node_id in node_ids))
            )
        for found in workflow_snapshots.values():
            found.sort()
        submissions = [
            (row.instance, _json(row.snapshot_metadata))
            for row in connection.execute(
                text(
                    "SELECT instance, snapshot_metadata FROM submission"
                    " WHERE run_id = :run ORDER BY id"
                ),
                run,
            )
        ]
    return CampaignState(nodes, edges, workflow_snapshots, submissions)


def _json(value: Any) -> Any:
    """JSON columns come back as text from some drivers; normalise to data."""
    data = json.loads(value) if isinstance(value, str) else value
    return json.loads(json.dumps(data, sort_keys=True))


@dataclass
class Expected:
    """What an uninterrupted replay gives: snapreg's own, and MUSCLE3's."""

    reference: CampaignState
    oracle_workflow_snapshots: dict[Member, list[tuple[Member, ...]]]
    oracle_active: dict[str, list[int]]

    @property
    def workflow_snapshot_count(self) -> int:
        """How many workflow snapshots the campaign makes."""
        return sum(len(found) for found in self.oracle_workflow_snapshots.values())


def expected_results(stream: Stream, workdir: Path) -> Expected:
    """Replay the campaign without interruption, in snapreg and in MUSCLE3.

    snapreg's replay goes through ``register_snapshot`` and the worker thread, as
    the children do, into a SQLite file without a snapshot folder.
    """
    url = f"sqlite:///{workdir / 'uninterrupted.sqlite'}"
    campaign = "uninterrupted"
    with SnapshotRegistry(
        stream.config, None, database_url=url, campaign=campaign
    ) as registry:
        registry.start()
        for instance, metadata in stream.registrations:
            register_or_raise(registry, instance, metadata)
    engine = inspection_engine(url)
    try:
        reference = read_state(engine, campaign)
    finally:
        engine.dispose()
    steps = run_oracle(stream)
    oracle: dict[Member, list[tuple[Member, ...]]] = {}
    for step in steps:
        if step.workflow_snapshots:
            oracle[(step.instance, step.num)] = sorted(
                tuple(sorted(members)) for members in step.workflow_snapshots
            )
    return Expected(reference, oracle, steps[-1].active)


def verify(
    url: str, folder: Path, stream: Stream, campaign: str, expected: Expected
) -> list[str]:
    """Check the campaign after the torture; return what is wrong (empty: nothing).

    Checks that every registration was stored exactly once and in order, that
    nodes, edges and workflow snapshots equal those of the uninterrupted run,
    that workflow snapshots and active nodes equal MUSCLE3's, that no row points
    nowhere, that rows and files match one to one, that the writer lease was
    given back, and (SQLite) that the file passes ``PRAGMA integrity_check``.
    """
    problems: list[str] = []
    engine = inspection_engine(url)
    try:
        state = read_state(engine, campaign)
        problems += _check_submissions(state, stream)
        problems += _compare("snapshot nodes", state.nodes, expected.reference.nodes)
        problems += _compare_sets(
            "consistent pairs", state.edges, expected.reference.edges
        )
        problems += _compare(
            "workflow snapshots (uninterrupted snapreg)",
            state.workflow_snapshots,
            expected.reference.workflow_snapshots,
        )
        problems += _compare(
            "workflow snapshots (MUSCLE3)",
            state.workflow_snapshots,
            expected.oracle_workflow_snapshots,
        )
        active: dict[str, list[int]] = {}
        for (instance, num), values in sorted(state.nodes.items()):
            if values[-1]:
                active.setdefault(instance, []).append(num)
        problems += _compare("active nodes (MUSCLE3)", active, expected.oracle_active)
        problems += orphan_rows(engine)
        problems += _check_files(engine, folder, campaign)
        problems += _check_lease(engine, campaign)
        problems += integrity_problems(engine)
    finally:
        engine.dispose()
    return problems


def _check_submissions(state: CampaignState, stream: Stream) -> list[str]:
    problems: list[str] = []
    expected = [
        (instance, _json(metadata_to_json(coerce_metadata(metadata))))
        for instance, metadata in stream.registrations
    ]
    if len(state.submissions) != len(expected):
        problems.append(
            f"{len(state.submissions)} submissions stored for"
            f" {len(expected)} registrations"
        )
    for index, (stored, wanted) in enumerate(
        zip(state.submissions, expected, strict=False)
    ):
        if stored != wanted:
            problems.append(f"submission {index} is {stored}, registered {wanted}")
            break
    return problems


def _compare(what: str, found: dict[Any, Any], wanted: dict[Any, Any]) -> list[str]:
    if found == wanted:
        return []
    missing = [key for key in wanted if key not in found]
    extra = [key for key in found if key not in wanted]
    differing = [key for key in wanted if key in found and found[key] != wanted[key]]
    return [
        f"{what} differ: {len(missing)} missing (e.g. {missing[:3]}),"
        f" {len(extra)} extra (e.g. {extra[:3]}), {len(differing)} different"
        + (
            f" (e.g. {differing[0]}: {found[differing[0]]} != {wanted[differing[0]]})"
            if differing
            else ""
        )
    ]


def _compare_sets(what: str, found: set[Any], wanted: set[Any]) -> list[str]:
    if found == wanted:
        return []
    return [
        f"{what} differ: {len(wanted - found)} missing"
        f" (e.g. {sorted(map(sorted, wanted - found))[:3]}), {len(found - wanted)}"
        f" extra (e.g. {sorted(map(sorted, found - wanted))[:3]})"
    ]


ORPHAN_QUERIES = {
    "consistent pairs with a node that does not exist": (
        "SELECT count(*) FROM consistent_pair p WHERE NOT EXISTS"
        " (SELECT 1 FROM snapshot_node n WHERE n.id = p.lower_node_id)"
        " OR NOT EXISTS (SELECT 1 FROM snapshot_node n WHERE n.id = p.higher_node_id)"
    ),
    "consistent pairs across runs or within one instance": (
        "SELECT count(*) FROM consistent_pair p"
        " JOIN snapshot_node a ON a.id = p.lower_node_id"
        " JOIN snapshot_node b ON b.id = p.higher_node_id"
        " WHERE a.run_id <> b.run_id OR a.instance = b.instance"
        " OR p.lower_node_id >= p.higher_node_id"
    ),
    "workflow snapshot members with a node that does not exist": (
        "SELECT count(*) FROM workflow_snapshot_member m WHERE NOT EXISTS"
        " (SELECT 1 FROM snapshot_node n WHERE n.id = m.snapshot_node_id)"
    ),
    "workflow snapshot members of a workflow snapshot that does not exist": (
        "SELECT count(*) FROM workflow_snapshot_member m WHERE NOT EXISTS"
        " (SELECT 1 FROM workflow_snapshot w WHERE w.id = m.workflow_snapshot_id)"
    ),
    "workflow snapshot members from another run": (
        "SELECT count(*) FROM workflow_snapshot_member m"
        " JOIN workflow_snapshot w ON w.id = m.workflow_snapshot_id"
        " JOIN snapshot_node n ON n.id = m.snapshot_node_id"
        " WHERE n.run_id <> w.run_id"
    ),
    "workflow snapshots without one member per instance": (
        "SELECT count(*) FROM workflow_snapshot w"
        " LEFT JOIN (SELECT m.workflow_snapshot_id AS id, count(*) AS members,"
        "  count(DISTINCT n.instance) AS instances FROM workflow_snapshot_member m"
        "  JOIN snapshot_node n ON n.id = m.snapshot_node_id"
        "  GROUP BY m.workflow_snapshot_id) c ON c.id = w.id"
        " LEFT JOIN (SELECT run_id, count(*) AS restarts FROM snapshot_node"
        "  WHERE is_restart GROUP BY run_id) r ON r.run_id = w.run_id"
        " WHERE c.members IS NULL OR c.members <> c.instances"
        " OR r.restarts IS NULL OR c.members <> r.restarts"
    ),
    "submissions that were never processed into a node": (
        "SELECT count(*) FROM submission s WHERE NOT EXISTS"
        " (SELECT 1 FROM snapshot_node n WHERE n.submission_id = s.id)"
    ),
    "nodes whose submission does not exist": (
        "SELECT count(*) FROM snapshot_node n WHERE n.submission_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM submission s WHERE s.id = n.submission_id)"
    ),
    "nodes of another instance than their submission": (
        "SELECT count(*) FROM snapshot_node n JOIN submission s"
        " ON s.id = n.submission_id WHERE s.instance <> n.instance"
        " OR s.run_id <> n.run_id"
    ),
    "registered nodes without a submission": (
        "SELECT count(*) FROM snapshot_node n WHERE NOT n.is_restart"
        " AND n.submission_id IS NULL"
    ),
    "runs without their restart nodes": (
        "SELECT count(*) FROM run r WHERE NOT EXISTS (SELECT 1 FROM snapshot_node n"
        " WHERE n.run_id = r.id AND n.is_restart AND n.num = 1)"
    ),
    "rows of runs that do not exist": (
        "SELECT (SELECT count(*) FROM snapshot_node n WHERE NOT EXISTS"
        "  (SELECT 1 FROM run r WHERE r.id = n.run_id))"
        " + (SELECT count(*) FROM submission s WHERE NOT EXISTS"
        "  (SELECT 1 FROM run r WHERE r.id = s.run_id))"
        " + (SELECT count(*) FROM workflow_snapshot w WHERE NOT EXISTS"
        "  (SELECT 1 FROM run r WHERE r.id = w.run_id))"
    ),
}


def orphan_rows(engine: Engine) -> list[str]:
    """Rows that point nowhere or contradict each other, over the whole database."""
    problems = []
    with engine.connect() as connection:
        for what, query in ORPHAN_QUERIES.items():
            count = connection.execute(text(query)).scalar_one()
            if count:
                problems.append(f"{count} {what}")
    return problems


def _check_files(engine: Engine, folder: Path, campaign: str) -> list[str]:
    problems: list[str] = []
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT w.id, w.path, n.instance, n.snapshot_filename, n.is_restart"
                " FROM workflow_snapshot w"
                " JOIN run r ON r.id = w.run_id"
                " JOIN campaign c ON c.id = r.campaign_id"
                " JOIN workflow_snapshot_member m ON m.workflow_snapshot_id = w.id"
                " JOIN snapshot_node n ON n.id = m.snapshot_node_id"
                " WHERE c.name = :campaign"
            ),
            {"campaign": campaign},
        ).all()
    resume: dict[str, dict[str, str]] = {}
    for row in rows:
        mapping = resume.setdefault(row.path, {})
        if not row.is_restart:
            mapping[row.instance] = str(Path(row.snapshot_filename))
    on_disk = {str(path.resolve()) for path in folder.glob("snapshot_*.ymmsl")}
    without_file = sorted(set(resume) - on_disk)
    without_row = sorted(on_disk - set(resume))
    if without_file:
        problems.append(
            f"{len(without_file)} workflow snapshot rows without a file,"
            f" e.g. {without_file[:3]}"
        )
    if without_row:
        problems.append(
            f"{len(without_row)} workflow snapshot files without a row,"
            f" e.g. {without_row[:3]}"
        )
    leftovers = sorted(path.name for path in folder.glob(f"{TEMPORARY_PREFIX}*"))
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers[:3]}")
    wrong = []
    for path in sorted(set(resume) & on_disk):
        content = yaml.load(Path(path).read_text(), Loader=yaml.CSafeLoader)
        written = {
            str(instance): str(Path(filename))
            for instance, filename in (content.get("resume") or {}).items()
        }
        if written != resume[path]:
            wrong.append(path)
    if wrong:
        problems.append(
            f"{len(wrong)} workflow snapshot files whose resume mapping differs from"
            f" their members, e.g. {wrong[:3]}"
        )
    return problems


def _check_lease(engine: Engine, campaign: str) -> list[str]:
    with engine.connect() as connection:
        holders = connection.execute(
            text(
                "SELECT r.number, r.writer_host, r.writer_pid FROM run r"
                " JOIN campaign c ON c.id = r.campaign_id"
                " WHERE c.name = :campaign AND r.writer_token IS NOT NULL"
            ),
            {"campaign": campaign},
        ).all()
    return [
        f"run {row.number} still held by pid {row.writer_pid} on {row.writer_host}"
        for row in holders
    ]


def database_rows(url: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table, sorted, as text: to check that nothing changed."""
    engine = inspection_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            return {
                name: sorted(
                    tuple(map(repr, row)) for row in connection.execute(table.select())
                )
                for name, table in sorted(tables.tables.items())
            }
    finally:
        engine.dispose()


def integrity_problems(engine: Engine) -> list[str]:
    """SQLite's own checks of the file: integrity and foreign keys."""
    if engine.dialect.name != "sqlite":
        return []
    problems = []
    with engine.connect() as connection:
        integrity = [
            row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check")
        ]
        if integrity != ["ok"]:
            problems.append(f"PRAGMA integrity_check: {integrity[:5]}")
        foreign = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
        if foreign:
            problems.append(f"PRAGMA foreign_key_check: {foreign[:5]}")
    return problems


# ------------------------------------------------------------------ entry points


def run_and_verify(
    url: str,
    folder: Path,
    stream: Stream,
    expected: Expected,
    *,
    kills: int,
    seed: int,
    workdir: Path,
    campaign: str = "torture",
    progress: Callable[[Round], None] | None = None,
) -> TortureReport:
    """:func:`torture`, then :func:`verify`; the problems go into the report."""
    report = torture(
        url,
        folder,
        stream,
        kills=kills,
        seed=seed,
        campaign=campaign,
        workdir=workdir,
        progress=progress,
    )
    began = time.monotonic()
    report.problems = verify(url, folder, stream, campaign, expected)
    report.verify_seconds = time.monotonic() - began
    report.workflow_snapshots = expected.workflow_snapshot_count
    return report


@contextmanager
def _scratch(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="snapreg-torture-") as name:
        yield Path(name)


def main(argv: list[str] | None = None) -> int:
    """Command line: torture a SQLite file (default) or a PostgreSQL database."""
    parser = argparse.ArgumentParser(
        prog="python -m support.torture",
        description="Kill a registry replaying a campaign many times; check nothing"
        " was lost. Run from the tests folder.",
    )
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="macro steps of the campaign (14 registrations each); default: enough"
        " for about 40 registrations per kill, at least 150",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="database under test; default: a SQLite file in the scratch folder."
        " A PostgreSQL database must be empty or hold no campaign 'torture'.",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="scratch folder to keep"
    )
    arguments = parser.parse_args(argv)
    steps = arguments.steps or max(150, math.ceil(arguments.kills * 40 / 14))
    spec = CampaignSpec(seed=arguments.seed, num_steps=steps)
    with _scratch(arguments.keep) as scratch:
        folder = scratch / "snapshots"
        folder.mkdir(exist_ok=True)
        url = arguments.url or f"sqlite:///{scratch / 'torture.sqlite'}"
        stream = spec.record()
        print(
            f"campaign: {len(stream.registrations)} registrations of"
            f" {len(stream.instances())} instances ({spec})",
            flush=True,
        )
        began = time.monotonic()
        expected = expected_results(stream, scratch)
        print(
            "uninterrupted runs (snapreg and MUSCLE3):"
            f" {time.monotonic() - began:.1f} s,"
            f" {expected.workflow_snapshot_count} workflow snapshots",
            flush=True,
        )

        def progress(played: Round) -> None:
            stored = played.stored_after
            print(
                f"  {played.kill_point:<28} from {played.start:>6} to {stored:>6}"
                + (" (finished)" if played.finished else ""),
                flush=True,
            )

        report = run_and_verify(
            url,
            folder,
            stream,
            expected,
            kills=arguments.kills,
            seed=arguments.seed,
            workdir=scratch,
            progress=progress,
        )
        print(json.dumps(report.summary(), indent=2))
        return 1 if report.problems or report.kills < arguments.kills else 0


if __name__ == "__main__":
    # Run the copy imported as support.torture, and keep multiprocessing from
    # re-running this script as __mp_main__ in every child: the children need
    # nothing from __main__.
    from support.torture import main as torture_main

    sys.modules["__main__"].__spec__ = None
    del sys.modules["__main__"].__file__
    sys.exit(torture_main())


# ----------------------------------------------- group commit under SIGKILL


def group_commit_child(
    url: str,
    spec: dict[str, Any],
    starts: dict[str, int],
    channel: Connection,
) -> None:
    """Register each instance's snapshots from its own thread, from ``starts`` on.

    Every acknowledgement is reported to the parent as (instance, index); the
    parent kills this process at a moment of its choosing.
    """
    stream = macro_micro(**spec)
    work: dict[str, list[Any]] = {}
    for instance, fields in stream.registrations:
        work.setdefault(instance, []).append(fields)
    registry = SnapshotRegistry(stream.config, None, database_url=url)
    registry.start()
    lock = threading.Lock()

    def register(instance: str) -> None:
        for index in range(starts.get(instance, 0), len(work[instance])):
            register_or_raise(registry, instance, work[instance][index])
            with lock:
                channel.send((instance, index))

    threads = [threading.Thread(target=register, args=(name,)) for name in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registry.close()
    channel.send(("done", -1))
