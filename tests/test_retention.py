"""`snapreg manage --keep N`: deleting, as the run goes, what `gc --keep N` would.

The worker alone (its signals coalesced, its pauses), the worker beside a real
registry (a registration never waits for a pass; a workflow snapshot whose file
is being written loses no file), what a live run keeps on top of gc's rules, and
real MUSCLE3 runs: files on disk stay bounded, and a manager killed in the middle
of a pass leaves every file the newest workflow snapshots need, from which the
run resumes to the same result as an uninterrupted one.
"""

from __future__ import annotations

import random
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from sqlalchemy import select

import snapreg.tools.gc_delete
import snapreg.tools.retention
from snapreg import SnapshotRegistry, WorkflowSnapshot
from snapreg.registry import files as registry_files
from snapreg.storage import schema
from snapreg.storage.engines import create_database_engine
from snapreg.tools.gc import CleanupPlan, plan_cleanup
from snapreg.tools.gc_delete import RECORD_BATCH, delete_files
from snapreg.tools.gc_read import LiveRun
from snapreg.tools.reader import DatabaseReader
from snapreg.tools.retention import RetentionWorker
from support import simulation
from support.command_line import invoke
from support.streams import Stream, macro_micro
from support.writers import leave_to_a_dead_process

#: Long enough for anything that should happen at once, on a busy machine.
PATIENCE = 30.0


# ------------------------------------------------------------- a campaign on disk


@dataclass
class OnDisk:
    """A stream registered into a run directory laid out as MUSCLE3 lays it out."""

    url: str
    run_dir: Path
    stream: Stream
    registry: SnapshotRegistry
    campaign: str = "retention"
    registered: int = 0
    found: list[WorkflowSnapshot] = field(default_factory=list)

    def file_of(self, index: int) -> Path:
        instance, _ = self.stream.registrations[index]
        return self.run_dir / "instances" / instance / "snapshots" / f"{index}.pack"

    def register(self, count: int | None = None) -> list[WorkflowSnapshot]:
        """Save and register the next ``count`` snapshots (default: the rest)."""
        end = (
            len(self.stream.registrations)
            if count is None
            else (self.registered + count)
        )
        found: list[WorkflowSnapshot] = []
        for index in range(self.registered, end):
            instance, data = self.stream.registrations[index]
            path = self.file_of(index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (100 + index))
            found.extend(
                self.registry.add_snapshot(
                    instance, {**data, "snapshot_filename": str(path)}
                )
            )
            self.registered = index + 1
        self.found.extend(found)
        return found

    def live(self) -> LiveRun:
        registry = self.registry
        return LiveRun(
            registry.run_number,
            unwritten=lambda: registry.unwritten_workflow_snapshot_files,
        )


def on_disk(
    url: str, tmp_path: Path, stream: Stream, **registry_options: Any
) -> OnDisk:
    run_dir = tmp_path / "run"
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(ymmsl.dump(stream.config))
    registry = SnapshotRegistry(
        stream.config,
        run_dir / "snapshots",
        database_url=url,
        campaign="retention",
        **registry_options,
    )
    return OnDisk(url, run_dir, stream, registry)


@pytest.fixture
def closing() -> Iterator[list[Callable[[], None]]]:
    """Things to close at the end of a test, last first, even when it fails."""
    to_close: list[Callable[[], None]] = []
    yield to_close
    for close in reversed(to_close):
        close()


def files_of(snapshots: list[WorkflowSnapshot]) -> set[Path]:
    return {
        Path(filename)
        for snapshot in snapshots
        for filename in snapshot.resume_files.values()
    }


def deletion_rows(url: str) -> list[Any]:
    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    select(schema.DeletedSnapshotFileRow.__table__)  # type: ignore[arg-type]
                )
            )
    finally:
        engine.dispose()


# ------------------------------------------------------------------ the worker


class FakePasses:
    """Stands in for gc's plan: counts passes, and can hold one until released."""

    def __init__(self, duration: float = 0.0) -> None:
        self.duration = duration
        self.started: list[float] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, *args: Any, **kwargs: Any) -> CleanupPlan:
        self.started.append(time.monotonic())
        self.entered.set()
        assert self.release.wait(PATIENCE)
        time.sleep(self.duration)
        return CleanupPlan("c", 1, 2, [], 0)


def test_signals_during_a_pass_are_coalesced_into_one_more_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes = FakePasses()
    monkeypatch.setattr(snapreg.tools.retention, "plan_cleanup", passes)
    worker = RetentionWorker("sqlite:///unused.sqlite", 2, idle_factor=0.0)
    passes.release.clear()
    worker.start("c", LiveRun(1))
    try:
        assert passes.entered.wait(PATIENCE)  # the first pass, held
        signalling = [
            threading.Thread(target=lambda: [worker.signal() for _ in range(100)])
            for _ in range(4)
        ]
        started = time.monotonic()
        for thread in signalling:
            thread.start()
        for thread in signalling:
            thread.join(PATIENCE)
        # 400 signals, none of them waiting for the pass that is held
        assert not any(thread.is_alive() for thread in signalling)
        assert time.monotonic() - started < PATIENCE / 2
        assert len(passes.started) == 1
    finally:
        passes.release.set()
    deadline = time.monotonic() + PATIENCE
    while worker.stats.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a third pass, were there one, would have started by now
    worker.stop()
    assert len(passes.started) == 2
    assert worker.stats.passes == 2


def test_stop_runs_a_last_pass_only_when_one_was_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes = FakePasses()
    monkeypatch.setattr(snapreg.tools.retention, "plan_cleanup", passes)
    # a pause so long after each pass that only stop() can cut it short
    worker = RetentionWorker("sqlite:///unused.sqlite", 1, min_interval=3600.0)
    worker.start("c", LiveRun(1))
    deadline = time.monotonic() + PATIENCE
    while worker.stats.passes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.signal()  # due only in an hour
    time.sleep(0.1)
    assert len(passes.started) == 1
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < PATIENCE / 2
    assert len(passes.started) == 2  # the last pass, at once

    idle = RetentionWorker("sqlite:///unused.sqlite", 1, min_interval=3600.0)
    idle.start("c", LiveRun(1))
    deadline = time.monotonic() + PATIENCE
    while idle.stats.passes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    idle.stop()
    assert len(passes.started) == 3  # its first pass; nothing asked for since


def test_a_pass_starts_no_sooner_than_the_pause_its_predecessor_earned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes = FakePasses(duration=0.05)
    monkeypatch.setattr(snapreg.tools.retention, "plan_cleanup", passes)
    worker = RetentionWorker("sqlite:///unused.sqlite", 1, idle_factor=4.0)
    worker.start("c", LiveRun(1))
    try:
        for _ in range(3):
            deadline = time.monotonic() + PATIENCE
            done = worker.stats.passes
            worker.signal()
            while worker.stats.passes == done and time.monotonic() < deadline:
                time.sleep(0.005)
    finally:
        worker.stop()
    assert len(passes.started) >= 3
    for earlier, later in zip(passes.started, passes.started[1:], strict=False):
        # the pass (at least 0.05 s), then four times its duration
        assert later - earlier >= 0.05 * 5


def test_keep_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(snapreg.ConfigurationError):
        RetentionWorker("sqlite:///unused.sqlite", 0)
    outcome = invoke(capsys, "manage", "--keep", "0", "--start-all", "x.ymmsl")
    assert outcome.status == 2
    assert "--keep" in outcome.stderr


# ------------------------------------------------------- the worker and a registry


def test_registrations_go_on_while_a_pass_is_held_in_its_deletions(
    persistent_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closing: list[Callable[[], None]],
) -> None:
    stream = macro_micro(7, num_micro=2, num_steps=8, micro_intermediate=False)
    worker = RetentionWorker(persistent_database_url, 1, idle_factor=0.0)
    campaign = on_disk(
        persistent_database_url,
        tmp_path,
        stream,
        on_workflow_snapshots=worker.signal,
    )
    closing.append(campaign.registry.close)
    half = len(stream.registrations) // 2
    assert campaign.register(half)
    held = threading.Event()
    release = threading.Event()
    unlink = snapreg.tools.gc_delete.unlink_if_still_safe

    def held_unlink(*args: Any) -> str | None:
        held.set()
        assert release.wait(PATIENCE)
        return unlink(*args)

    monkeypatch.setattr(snapreg.tools.gc_delete, "unlink_if_still_safe", held_unlink)
    worker.start(campaign.campaign, campaign.live())
    closing.append(worker.stop)
    closing.append(release.set)
    assert held.wait(PATIENCE)  # the first pass is about to delete its first file

    finishing = threading.Thread(target=campaign.register)
    finishing.start()
    finishing.join(PATIENCE)

    assert not finishing.is_alive()  # every registration done, the pass still held
    assert campaign.registered == len(stream.registrations)
    assert len(campaign.found) > 2
    assert worker.stats.passes == 0
    release.set()
    deadline = time.monotonic() + PATIENCE
    while worker.stats.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert worker.stats.passes == 2  # the held one, and one for all the signals
    assert worker.stats.failed_passes == 0
    assert all(path.is_file() for path in files_of(campaign.found[-1:]))
    assert (
        plan_cleanup(
            persistent_database_url, campaign.campaign, 1, live=campaign.live()
        ).deletable
        == []
    )
    rows = deletion_rows(persistent_database_url)
    assert len(rows) == worker.stats.deleted > 0
    assert {row.reason for row in rows} == {
        "snapreg manage --keep 1 (run 1): needed by none of the newest 1 workflow"
        " snapshots, nor an active node of the newest run or of a run being written,"
        " nor a workflow snapshot whose file is being written, nor the run's resume"
        " files"
    }
    on_disk_now = {
        path
        for index in range(len(stream.registrations))
        if (path := campaign.file_of(index)).exists()
    }
    assert len(on_disk_now) + len(rows) == len(stream.registrations)


def test_no_file_of_a_workflow_snapshot_being_written_is_deleted(
    persistent_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closing: list[Callable[[], None]],
) -> None:
    # Seed 1: registration 4 completes four workflow snapshots at once, and two
    # nodes are members only of the older ones, retired by that very commit:
    # committed is not the same as among the newest two.
    stream = macro_micro(1, num_micro=2, num_steps=3)
    campaign = on_disk(persistent_database_url, tmp_path, stream)
    closing.append(campaign.registry.close)
    campaign.register(4)
    held = threading.Event()
    release = threading.Event()
    closing.append(release.set)
    write = registry_files.write_file

    def held_write(path: Path, text: str, *, sync: bool) -> None:
        held.set()
        assert release.wait(PATIENCE)
        write(path, text, sync=sync)

    monkeypatch.setattr(registry_files, "write_file", held_write)
    registering = threading.Thread(target=campaign.register, args=(1,))
    registering.start()
    assert held.wait(PATIENCE)  # its rows committed, its first file being written

    with DatabaseReader(persistent_database_url) as reader:
        committed = reader.workflow_snapshots(campaign.campaign)
    batch = [snapshot for snapshot in committed if snapshot.path is not None]
    being_written = [
        snapshot
        for snapshot in batch
        if snapshot.path in campaign.registry.unwritten_workflow_snapshot_files
    ]
    assert len(being_written) == 4
    needed = files_of(being_written)
    # without knowing what is being written, gc's rules would delete some of it
    blind = plan_cleanup(persistent_database_url, campaign.campaign, 2, live=LiveRun(1))
    assert needed & {entry.path for entry in blind.deletable}

    plan = plan_cleanup(
        persistent_database_url, campaign.campaign, 2, live=campaign.live()
    )
    assert not needed & {entry.path for entry in plan.deletable}
    result = delete_files(persistent_database_url, plan)
    assert len(result.deleted) == len(plan.deletable)
    release.set()
    registering.join(PATIENCE)
    assert not registering.is_alive()
    assert all(path.is_file() for path in needed)
    assert campaign.registry.unwritten_workflow_snapshot_files == frozenset()
    assert all(
        snapshot.path is not None and snapshot.path.is_file()
        for snapshot in being_written
    )


@pytest.fixture
def beside_a_newer_run(
    persistent_database_url: str, tmp_path: Path, closing: list[Callable[[], None]]
) -> tuple[OnDisk, set[Path]]:
    """Run 1 of a campaign, still open, with files of active nodes that no
    workflow snapshot has; and run 2, started beside it."""
    url = persistent_database_url
    stream = macro_micro(3, num_micro=2, num_steps=4, micro_intermediate=False)
    campaign = on_disk(url, tmp_path / "first", stream)
    closing.append(campaign.registry.close)
    # all but the macro's last: the micros' last snapshots are active nodes that
    # no workflow snapshot has yet
    campaign.register(len(stream.registrations) - 1)
    active = {campaign.file_of(index) for index in (9, 10)}
    assert not active & files_of(campaign.found)
    # a second manager forced on: a newer run of the campaign, while this one runs
    (tmp_path / "second").mkdir()
    newer = SnapshotRegistry(
        stream.config,
        tmp_path / "second",
        database_url=url,
        campaign=campaign.campaign,
        new_run=True,
    )
    closing.append(newer.close)
    return campaign, active


def test_a_live_run_keeps_its_active_nodes_and_resume_files_beside_a_newer_run(
    persistent_database_url: str, beside_a_newer_run: tuple[OnDisk, set[Path]]
) -> None:
    campaign, active = beside_a_newer_run
    resume_file = campaign.file_of(0)

    def deletable(live: LiveRun | None) -> set[Path]:
        plan = plan_cleanup(persistent_database_url, campaign.campaign, 1, live=live)
        return {entry.path for entry in plan.deletable}

    as_gc = deletable(None)
    as_newer = deletable(LiveRun(2))
    as_first = deletable(LiveRun(1, resume_files=[str(resume_file)]))

    assert active <= as_gc  # gc keeps only the newest run's active nodes
    assert not active & as_newer  # run 1 still has a writer
    assert not active & as_first
    assert resume_file in as_gc and resume_file in as_newer
    assert resume_file not in as_first
    campaign.registry.close()  # run 1 ends: no one writes it any more
    assert active <= deletable(LiveRun(2))


def test_a_run_whose_writer_died_keeps_no_files_beside_a_newer_run(
    persistent_database_url: str, beside_a_newer_run: tuple[OnDisk, set[Path]]
) -> None:
    campaign, active = beside_a_newer_run
    campaign.registry.close()
    # run 1's manager was killed: its lease names a process that is gone (and,
    # on PostgreSQL, no session holds the run)
    leave_to_a_dead_process(persistent_database_url, campaign.campaign, number=1)

    plan = plan_cleanup(persistent_database_url, campaign.campaign, 1, live=LiveRun(2))

    assert active <= {entry.path for entry in plan.deletable}


# ------------------------------------------------------------ real MUSCLE3 runs

#: A workflow snapshot every 0.05 of simulated time (21 and the micro's), with
#: macro steps slow enough for a pass to run between them.
DENSE = """\
ymmsl_version: v0.2
settings:
  macro.step_sleep: {sleep}
checkpoints:
  simulation_time:
  - every: 0.05
"""
MODEL = "reaction_diffusion"
KEEP = 2

#: snapreg manage, with every unlink of a retention pass noted in a file and
#: slowed down, so that a test can kill the manager in the middle of a pass.
SLOWED_PASSES = """
import os, sys, time
import snapreg.tools.gc_delete as gc_delete
unlink = gc_delete.unlink_if_still_safe
def noted_unlink(path, *args):
    problem = unlink(path, *args)
    with open({marker!r}, "a") as marker:
        marker.write(f"{{path}}\\n")
    time.sleep(0.1)
    return problem
gc_delete.unlink_if_still_safe = noted_unlink
from snapreg.cli.main import main
main({arguments!r})
"""


def dense_overlay(folder: Path, sleep: float) -> Path:
    path = folder / "dense.ymmsl"
    path.write_text(DENSE.format(sleep=sleep), encoding="utf-8")
    return path


def instance_files(run_dir: Path) -> set[Path]:
    return set((run_dir / "instances").glob("*/snapshots/*.pack"))


def newest_files(url: str, keep: int = KEEP) -> set[Path]:
    """The files the campaign's newest ``keep`` workflow snapshots need."""
    with DatabaseReader(url) as reader:
        return files_of(reader.workflow_snapshots(MODEL)[-keep:])


@dataclass(frozen=True)
class RetainedRun:
    url: str
    run_dir: Path
    most_files: int
    final_state: bytes


@pytest.fixture(scope="module")
def retained_run(tmp_path_factory: pytest.TempPathFactory) -> RetainedRun:
    """One uninterrupted run under `manage --keep 2`, files counted as it goes."""
    base = tmp_path_factory.mktemp("retained")
    url = f"sqlite:///{base / 'db.sqlite'}"
    run_dir = base / "run"
    command = simulation.manage_command(
        url, run_dir, dense_overlay(base, 0.02), options=["--keep", str(KEEP)]
    )
    most = 0
    with simulation.started(command, base, base / "run.log") as manager:
        deadline = time.monotonic() + simulation.RUN_TIMEOUT
        while manager.poll() is None and time.monotonic() < deadline:
            most = max(most, len(instance_files(run_dir)))
            time.sleep(0.01)
        assert manager.wait(timeout=30) == 0, (base / "run.log").read_text()
    return RetainedRun(
        url, run_dir.resolve(), most, (run_dir / simulation.FINAL_STATE).read_bytes()
    )


@pytest.mark.muscle3
@pytest.mark.slow
def test_a_run_under_keep_2_keeps_its_files_bounded_and_the_newest_two_whole(
    retained_run: RetainedRun,
) -> None:
    url, run_dir = retained_run.url, retained_run.run_dir
    rows = deletion_rows(url)
    on_disk_now = instance_files(run_dir)
    written = len(on_disk_now) + len(rows)
    with DatabaseReader(url) as reader:
        snapshots = reader.workflow_snapshots(MODEL)
    assert len(snapshots) > 20
    assert written > 80  # four instances, more than 20 checkpoints each
    # never more than a fraction of what the run wrote on disk at once (29 of
    # 109 when this test was written)
    assert retained_run.most_files <= written // 2, (retained_run.most_files, written)
    assert newest_files(url) <= on_disk_now
    # after the last pass: nothing but what the newest two and the run's last
    # active snapshots need (at most one more per instance)
    assert len(on_disk_now) <= 4 * (KEEP + 1)
    assert plan_cleanup(url, MODEL, KEEP, live=LiveRun(1)).deletable == []
    assert {Path(row.path) for row in rows}.isdisjoint(on_disk_now)
    assert all(row.reason.startswith("snapreg manage --keep 2") for row in rows)
    log = (run_dir / "muscle3_manager.log").read_text(encoding="utf-8")
    assert "that none of the newest 2 workflow snapshots needs" in log
    assert "could not clean up" not in log


@pytest.mark.muscle3
@pytest.mark.slow
def test_a_manager_killed_during_retention_leaves_the_newest_two_whole_and_resumes(
    retained_run: RetainedRun, tmp_path: Path
) -> None:
    chance = random.Random(20261207)
    for trial in range(3):
        base = tmp_path / f"trial{trial}"
        base.mkdir()
        url = f"sqlite:///{base / 'db.sqlite'}"
        marker = base / "unlinked.txt"
        first_dir = base / "run1"
        first_dir.mkdir()
        arguments = [
            "manage",
            "--db",
            url,
            "--keep",
            str(KEEP),
            "--start-all",
            "--run-dir",
            str(first_dir),
            *simulation.MODEL_FILES,
            str(dense_overlay(base, 0.04)),
        ]
        script = textwrap.dedent(
            SLOWED_PASSES.format(marker=str(marker), arguments=arguments)
        )
        # kill after the k-th unlink of the run, between it and its record
        kill_after = chance.randint(1, 12)
        with simulation.started(
            [sys.executable, "-c", script], base, base / "run1.log"
        ) as manager:
            deadline = time.monotonic() + simulation.RUN_TIMEOUT
            while time.monotonic() < deadline and manager.poll() is None:
                if marker.exists() and len(marker.read_text().splitlines()) >= (
                    kill_after
                ):
                    break
                time.sleep(0.005)
            assert manager.poll() is None, (base / "run1.log").read_text()
            simulation.kill_group(manager)
        unlinked = {Path(line) for line in marker.read_text().splitlines()}
        recorded = {Path(row.path) for row in deletion_rows(url)}

        needed = newest_files(url)
        assert needed and all(path.is_file() for path in needed), trial
        assert unlinked.isdisjoint(needed)
        assert recorded <= unlinked
        assert len(unlinked - recorded) <= RECORD_BATCH

        second_dir = base / "run2"
        with DatabaseReader(url) as reader:
            newest = reader.workflow_snapshots(MODEL)[-1]
        resumed = simulation.run(
            simulation.manage_command(
                url,
                second_dir,
                dense_overlay(base, 0.0),
                options=["--resume-latest", "--keep", str(KEEP)],
            ),
            cwd=base,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming from workflow snapshot {newest.id} of run 1" in (
            resumed.stderr
        )
        assert (second_dir / simulation.FINAL_STATE).read_bytes() == (
            retained_run.final_state
        )
        assert newest_files(url) <= instance_files(second_dir.resolve())
