"""The registry against MUSCLE3's own, fed the same registrations.

After every registration the workflow snapshots it completed (as sets of instance
and num), their resume mappings and the active nodes of every instance must equal
what ``libmuscle.manager.snapshot_registry`` does with the same input. The oracle is
the installed MUSCLE3's registry, whichever supported release that is; CI runs these
tests on each of them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import ymmsl

from snapreg import SnapshotRegistry, WorkflowSnapshot
from support.entries import register_or_raise
from support.oracle import OracleStep, run_oracle
from support.streams import (
    Stream,
    all_streams,
    as_libmuscle_0_10_reports,
    dispatch,
    macro_micro,
)

pytestmark = pytest.mark.muscle3

STREAMS = all_streams(0)
#: Runs with F_INIT ports that no conduit connects, as libmuscle 0.10 reports them
#: (-1 in final snapshots).
LIBMUSCLE_0_10_STREAMS = [
    as_libmuscle_0_10_reports(stream)
    for stream in [
        dispatch(1, length=2, num_steps=4, checkpoint_every=1),
        dispatch(2, length=5, num_steps=6),
        dispatch(3, length=4, num_steps=8, checkpoint_every=1, skip_probability=0.4),
    ]
]


def _members(found: list[WorkflowSnapshot]) -> Counter[frozenset[tuple[str, int]]]:
    return Counter(snapshot.members for snapshot in found)


def _active(registry: SnapshotRegistry, stream: Stream) -> dict[str, list[int]]:
    return {
        instance: [node.num for node in registry.snapshots(instance)]
        for instance in stream.instances()
    }


def _check_step(
    registry: SnapshotRegistry,
    stream: Stream,
    index: int,
    found: list[WorkflowSnapshot],
    step: OracleStep,
) -> None:
    where = f"{stream.name}, registration {index} ({step.instance})"
    assert _members(found) == Counter(step.workflow_snapshots), where
    assert sorted(
        sorted((str(k), str(v)) for k, v in snapshot.resume.items())
        for snapshot in found
    ) == sorted(sorted(resume.items()) for resume in step.resume), where
    assert _active(registry, stream) == step.active, where


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize("stream", STREAMS, ids=[stream.name for stream in STREAMS])
def test_same_results_as_muscle3(
    stream: Stream, database_url: str, tmp_path: Path
) -> None:
    _check_same_results(stream, database_url, tmp_path)


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize(
    "stream",
    LIBMUSCLE_0_10_STREAMS,
    ids=[stream.name for stream in LIBMUSCLE_0_10_STREAMS],
)
def test_libmuscle_0_10_counts_give_muscle3s_results(
    stream: Stream, database_url: str, tmp_path: Path
) -> None:
    below_zero = [
        instance
        for instance, fields in stream.registrations
        if any(
            min(counts, default=0) < 0
            for counts in fields["port_message_counts"].values()
        )
    ]
    assert below_zero and all(instance == "c0" for instance in below_zero)
    _check_same_results(stream, database_url, tmp_path)


def _check_same_results(stream: Stream, database_url: str, tmp_path: Path) -> None:
    steps = run_oracle(stream)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    with SnapshotRegistry(stream.config, folder, database_url=database_url) as registry:
        for index, ((instance, metadata), step) in enumerate(
            zip(stream.registrations, steps, strict=True)
        ):
            found = registry.add_snapshot(instance, metadata)
            _check_step(registry, stream, index, found, step)
            for snapshot in found:
                assert snapshot.path is not None and snapshot.path.exists()
        total = sum(len(step.workflow_snapshots) for step in steps)
        stored = registry.workflow_snapshots()
        assert len(stored) == total
        assert len(list(folder.glob("snapshot_*.ymmsl"))) == total


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize(
    "stream", STREAMS[::3], ids=[stream.name for stream in STREAMS[::3]]
)
def test_reopening_between_registrations_changes_nothing(
    stream: Stream, persistent_database_url: str, tmp_path: Path
) -> None:
    steps = run_oracle(stream)
    registry = SnapshotRegistry(
        stream.config, tmp_path, database_url=persistent_database_url
    )
    try:
        for index, ((instance, metadata), step) in enumerate(
            zip(stream.registrations, steps, strict=True)
        ):
            if index % 3 == 1:
                run_number = registry.run_number
                registry.close()
                registry = SnapshotRegistry(
                    stream.config, tmp_path, database_url=persistent_database_url
                )
                assert registry.run_number == run_number
            found = registry.add_snapshot(instance, metadata)
            _check_step(registry, stream, index, found, step)
    finally:
        registry.close()


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize("stream", STREAMS[:6], ids=[s.name for s in STREAMS[:6]])
def test_worker_thread_gives_the_same_workflow_snapshots(
    stream: Stream, database_url: str, tmp_path: Path
) -> None:
    steps = run_oracle(stream)
    registry = SnapshotRegistry(stream.config, tmp_path, database_url=database_url)
    registry.start()
    for instance, metadata in stream.registrations:
        register_or_raise(registry, instance, metadata)
    registry.shutdown()
    registry.join()
    try:
        expected = Counter(
            members for step in steps for members in step.workflow_snapshots
        )
        assert _members(registry.workflow_snapshots()) == expected
        assert _active(registry, stream) == steps[-1].active
        assert registry.pending_count() == 0
    finally:
        registry.close()


def test_files_resume_what_muscle3_would(tmp_path: Path) -> None:
    stream = macro_micro(7, num_micro=3, num_steps=3)
    steps = run_oracle(stream)
    with SnapshotRegistry(stream.config, tmp_path) as registry:
        for instance, metadata in stream.registrations:
            registry.add_snapshot(instance, metadata)
        stored = registry.workflow_snapshots()
    expected = sorted(
        sorted(resume.items()) for step in steps for resume in step.resume
    )
    written = []
    for snapshot in stored:
        assert snapshot.path is not None
        loaded = ymmsl.load(snapshot.path)
        written.append(sorted((str(k), str(v)) for k, v in loaded.resume.items()))
        # yMMSL writes the description as a YAML block that keeps a final newline
        assert loaded.description.rstrip("\n") == snapshot.description.rstrip("\n")
        assert snapshot.description.startswith(
            f"Workflow snapshot for {stream.config.root_model().name} taken on "
        )
    assert sorted(written) == expected
