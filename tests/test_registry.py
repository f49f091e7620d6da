"""Behaviour of the registry a user sees beyond MUSCLE3 parity.

Bad input, runs and campaigns, the writer lease, durability of acknowledged
registrations across a crash, the worker's errors, and file naming.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from libmuscle.manager.topology_store import TopologyStore
from libmuscle.snapshot import SnapshotMetadata as Muscle3Metadata
from sqlalchemy import create_engine, text
from ymmsl import v0_1
from ymmsl.v0_2 import Reference

from snapreg import (
    ConfigurationError,
    InvalidInputError,
    InvalidMetadataError,
    NotFoundError,
    SnapshotMetadata,
    SnapshotRegistry,
    TopologyMismatchError,
    UnknownInstanceError,
    WorkerError,
    WriterConflictError,
)
from snapreg.registry.files import NameAllocator
from snapreg.rules.graph import ActiveGraph
from support.entries import call_entry, register_or_raise
from support.oracle import run_oracle
from support.streams import Stream, dispatch, ensemble, macro_micro
from support.torture import database_rows

STREAM = macro_micro(11, num_micro=3, num_steps=3)


def metadata(
    counts: dict[str, list[int]],
    *,
    timestamp: float = 1.0,
    final: bool = False,
    filename: str = "/snapshots/s.pack",
) -> dict[str, Any]:
    """Metadata as MUSCLE3 reports it, with sensible defaults."""
    return {
        "triggers": ["simulation_time >= 1"],
        "wallclock_time": 2.5,
        "timestamp": timestamp,
        "next_timestamp": None,
        "port_message_counts": counts,
        "is_final_snapshot": final,
        "snapshot_filename": filename,
    }


BAD_INPUTS: list[tuple[str, Any, Any, type[Exception]]] = [
    ("unknown component", "nope", metadata({}), UnknownInstanceError),
    ("index out of range", "micro[9]", metadata({}), UnknownInstanceError),
    ("missing index", "micro", metadata({}), UnknownInstanceError),
    ("not an instance", "micro[", metadata({}), UnknownInstanceError),
    (
        "index of 5000 digits",
        "micro[" + "9" * 5000 + "]",
        metadata({}),
        UnknownInstanceError,
    ),
    (
        "index of 30 digits",
        "micro[" + "9" * 30 + "]",
        metadata({}),
        UnknownInstanceError,
    ),
    ("index not ASCII digits", "micro[\u00b2]", metadata({}), UnknownInstanceError),
    ("negative count", "macro", metadata({"o_i": [-1]}), InvalidMetadataError),
    ("float count", "macro", metadata({"o_i": [1.5]}), InvalidMetadataError),
    ("bool count", "macro", metadata({"o_i": [True]}), InvalidMetadataError),
    ("counts not a list", "macro", metadata({"o_i": 3}), InvalidMetadataError),
    ("counts not a dict", "macro", metadata([1, 2]), InvalidMetadataError),  # type: ignore[arg-type]
    ("port not a name", "macro", metadata({"o i": [1]}), InvalidMetadataError),
    ("huge count", "macro", metadata({"o_i": [2**64]}), InvalidMetadataError),
    (
        "NaN wallclock",
        "macro",
        {**metadata({}), "wallclock_time": math.nan},
        InvalidMetadataError,
    ),
    (
        "inf wallclock",
        "macro",
        {**metadata({}), "wallclock_time": math.inf},
        InvalidMetadataError,
    ),
    ("string time", "macro", {**metadata({}), "timestamp": "1"}, InvalidMetadataError),
    ("empty filename", "macro", metadata({}, filename=""), InvalidMetadataError),
    ("NUL in filename", "macro", metadata({}, filename="a\x00b"), InvalidMetadataError),
    (
        "final not bool",
        "macro",
        {**metadata({}), "is_final_snapshot": 1},
        InvalidMetadataError,
    ),
    (
        "triggers not strings",
        "macro",
        {**metadata({}), "triggers": [1]},
        InvalidMetadataError,
    ),
    ("missing field", "macro", {"triggers": []}, InvalidMetadataError),
    ("extra field", "macro", {**metadata({}), "colour": "red"}, InvalidMetadataError),
    ("not metadata", "macro", 42, InvalidMetadataError),
]


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize(
    ("instance", "bad", "error"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_bad_input_is_refused_and_changes_nothing(
    persistent_database_url: str,
    tmp_path: Path,
    instance: str,
    bad: Any,
    error: type[Exception],
    entry: str,
) -> None:
    steps = run_oracle(STREAM)
    half = len(STREAM.registrations) // 2
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ) as registry:
        for name, good in STREAM.registrations[:half]:
            registry.add_snapshot(name, good)
        before = database_rows(persistent_database_url)
        files_before = sorted(tmp_path.iterdir())
        with pytest.raises(error) as raised:
            call_entry(registry, entry, instance, bad)
        assert isinstance(raised.value, InvalidInputError)
        assert str(raised.value)
        assert database_rows(persistent_database_url) == before
        assert sorted(tmp_path.iterdir()) == files_before
        # and it goes on exactly as if the bad input had never come
        for index in range(half, len(STREAM.registrations)):
            name, good = STREAM.registrations[index]
            found = registry.add_snapshot(name, good)
            assert sorted(map(sorted, (w.members for w in found))) == sorted(
                map(sorted, steps[index].workflow_snapshots)
            )


def test_counts_lower_than_before_are_refused(database_url: str) -> None:
    with SnapshotRegistry(STREAM.config, None, database_url=database_url) as registry:
        registry.add_snapshot("macro", metadata({"o_i": [2, 2, 2], "s": [1, 1, 1]}))
        with pytest.raises(InvalidMetadataError, match="port o_i slot 1 is 1, lower"):
            registry.add_snapshot("macro", metadata({"o_i": [2, 1, 2], "s": [1, 1, 1]}))
        with pytest.raises(InvalidMetadataError, match="port s slot 0 is 0"):
            register_or_raise(registry, "macro", metadata({"o_i": [2, 2, 2]}))
        registry.add_snapshot("macro", metadata({"o_i": [2, 2, 2], "s": [1, 1, 1]}))
        assert [node.num for node in registry.history("macro")] == [1, 2, 3]


# A dispatch chain c0 -> c1 -> c2: every component declares F_INIT f_i and O_F o_f;
# c0.f_i and c2.o_f are connected to nothing.
DISPATCH = dispatch(3, length=3)
SETTINGS = "muscle_settings_in"

#: Counts libmuscle 0.10 really sends: a port that never received reports -1 in a
#: final snapshot, one lower than the 0 it reported before.
SENT_BY_LIBMUSCLE_0_10 = [
    ("final after intermediate", [({"f_i": [0]}, False), ({"f_i": [-1]}, True)]),
    ("final first", [({"f_i": [-1], "o_f": [1], SETTINGS: [0]}, True)]),
    (
        "reuse after final",
        [({"f_i": [-1]}, True), ({"f_i": [0]}, False), ({"f_i": [-1]}, True)],
    ),
    # instances declare ports the yMMSL may leave out (MUSCLE3's complex coupling)
    ("undeclared port", [({"f_i": [0], "in2": [0]}, False), ({"in2": [-1]}, True)]),
]

#: Counts MUSCLE3 never sends, each after the registrations before it.
NEVER_SENT = [
    ("-1 on a connected F_INIT port", "c1", [], {"f_i": [-1]}, True),
    ("connected F_INIT port one lower", "c1", [({"f_i": [1]}, False)], {}, True),
    ("-1 in an intermediate snapshot", "c0", [], {"f_i": [-1]}, False),
    ("-2 in a final snapshot", "c0", [], {"f_i": [-2]}, True),
    ("-2 after -1", "c0", [({"f_i": [-1]}, True)], {"f_i": [-2]}, True),
    ("-1 on an O_F port", "c2", [], {"o_f": [-1]}, True),
    ("-1 on the settings port", "c0", [], {SETTINGS: [-1]}, True),
    ("-1 on a connected sending port", "c0", [], {"o_f": [-1]}, True),
    ("down by one, not final", "c0", [({"in2": [1]}, False)], {"in2": [0]}, False),
]


def _counts_metadata(counts: dict[str, list[int]], final: bool) -> dict[str, Any]:
    return metadata(counts, final=final)


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize(
    "sequence",
    [case[1] for case in SENT_BY_LIBMUSCLE_0_10],
    ids=[case[0] for case in SENT_BY_LIBMUSCLE_0_10],
)
@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_counts_libmuscle_0_10_sends_are_accepted(
    database_url: str,
    sequence: list[tuple[dict[str, list[int]], bool]],
    entry: str,
) -> None:
    with SnapshotRegistry(DISPATCH.config, None, database_url=database_url) as registry:
        for counts, final in sequence:
            call_entry(registry, entry, "c0", _counts_metadata(counts, final))
        assert registry.refusals == []
        history = registry.history("c0")
    assert [node.snapshot.port_message_counts for node in history[1:]] == [
        counts for counts, _ in sequence
    ]


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize(
    ("instance", "before", "counts", "final"),
    [case[1:] for case in NEVER_SENT],
    ids=[case[0] for case in NEVER_SENT],
)
def test_counts_muscle3_never_sends_are_refused(
    persistent_database_url: str,
    instance: str,
    before: list[tuple[dict[str, list[int]], bool]],
    counts: dict[str, list[int]],
    final: bool,
) -> None:
    with SnapshotRegistry(
        DISPATCH.config, None, database_url=persistent_database_url
    ) as registry:
        for earlier, earlier_final in before:
            registry.add_snapshot(instance, _counts_metadata(earlier, earlier_final))
        rows = database_rows(persistent_database_url)
        for entry in ("add_snapshot", "register_snapshot"):
            with pytest.raises(
                InvalidMetadataError, match=f"{instance}: message count"
            ):
                call_entry(registry, entry, instance, _counts_metadata(counts, final))
        assert database_rows(persistent_database_url) == rows


def test_a_resumed_instance_carries_on_from_its_resumed_counts(
    database_url: str,
) -> None:
    # libmuscle 0.10 restores the -1 of the final snapshot it resumes from: the
    # copy it registers first says -1, intermediates say -1, finals -2.
    config = copy.deepcopy(DISPATCH.config)
    config.resume = {Reference("c0"): Path("/run1/instances/c0/snapshots/c0_2.pack")}
    sequence = [({"f_i": [-1]}, True), ({"f_i": [-1]}, False), ({"f_i": [-2]}, True)]
    with SnapshotRegistry(config, None, database_url=database_url) as registry:
        for counts, final in sequence:
            registry.add_snapshot("c0", _counts_metadata(counts, final))
        with pytest.raises(InvalidMetadataError, match="port o_f slot 0 is -1"):
            registry.add_snapshot("c0", _counts_metadata({"o_f": [-1]}, True))
        with pytest.raises(InvalidMetadataError, match="c1: message count"):
            registry.add_snapshot("c1", _counts_metadata({"f_i": [-1]}, True))
        assert len(registry.history("c0")) == 1 + len(sequence)


def test_nan_and_infinite_times_are_kept(database_url: str) -> None:
    with SnapshotRegistry(STREAM.config, None, database_url=database_url) as registry:
        registry.add_snapshot("micro[0]", metadata({}, timestamp=math.nan))
        registry.register_snapshot(
            "micro[1]", {**metadata({}, timestamp=math.nan), "next_timestamp": math.inf}
        )
        registry.add_snapshot("micro[2]", {**metadata({}), "timestamp": math.inf})
        first = registry.history("micro[0]")[-1].snapshot
        second = registry.history("micro[1]")[-1].snapshot
        third = registry.history("micro[2]")[-1].snapshot
    assert math.isnan(first.timestamp)
    assert math.isnan(second.timestamp) and second.next_timestamp == math.inf
    assert third.timestamp == math.inf


@pytest.mark.muscle3
def test_accepts_muscle3_objects_and_ymmsl_v0_1(tmp_path: Path) -> None:
    legacy = v0_1.PartialConfiguration(
        model=v0_1.Model(
            "legacy",
            [v0_1.Component("macro", "m"), v0_1.Component("micro", "u", [2])],
            [
                v0_1.Conduit("macro.o_i", "micro.f_i"),
                v0_1.Conduit("micro.o_f", "macro.s"),
            ],
        )
    )
    with SnapshotRegistry(legacy, tmp_path) as registry:
        assert registry.campaign == "legacy"
        registry.add_snapshot(
            v0_1.Reference("macro"),
            Muscle3Metadata(
                ["t"], 1.0, 1.0, None, {"o_i": [1, 1], "s": [1, 1]}, False, "m"
            ),
        )
        for index in range(2):
            found = registry.add_snapshot(
                f"micro[{index}]",
                Muscle3Metadata(
                    ["t"], 1.0, 1.0, None, {"f_i": [1], "o_f": [1]}, True, "u"
                ),
            )
        assert [snapshot.members for snapshot in found] == [
            frozenset({("macro", 2), ("micro[0]", 2), ("micro[1]", 2)})
        ]
        assert found[0].path is not None
        loaded = ymmsl.load(found[0].path)
        assert loaded.__class__.__module__.startswith("ymmsl.v0_1")
        assert {str(k): str(v) for k, v in loaded.resume.items()} == {
            "macro": "m",
            "micro[0]": "u",
            "micro[1]": "u",
        }


@pytest.mark.muscle3
def test_muscle3_topology_store_is_used(tmp_path: Path) -> None:
    steps = run_oracle(STREAM)
    with SnapshotRegistry(
        STREAM.config, tmp_path, TopologyStore(STREAM.config)
    ) as registry:
        for (name, good), step in zip(STREAM.registrations, steps, strict=True):
            found = registry.add_snapshot(name, good)
            assert sorted(map(sorted, (w.members for w in found))) == sorted(
                map(sorted, step.workflow_snapshots)
            )


def test_without_a_folder_nothing_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with SnapshotRegistry(STREAM.config, None) as registry:
        found = [
            w
            for name, good in STREAM.registrations
            for w in registry.add_snapshot(name, good)
        ]
        assert found and all(snapshot.path is None for snapshot in found)
    assert list(tmp_path.iterdir()) == []


def test_runs_and_campaigns(persistent_database_url: str, tmp_path: Path) -> None:
    url = persistent_database_url
    with SnapshotRegistry(STREAM.config, tmp_path, database_url=url) as first:
        for name, good in STREAM.registrations:
            first.add_snapshot(name, good)
        first_snapshots = first.workflow_snapshots()
        assert first.campaign == STREAM.config.root_model().name
    resume_point = first_snapshots[-1]
    with SnapshotRegistry(
        STREAM.config,
        tmp_path,
        database_url=url,
        new_run=True,
        resumed_from=resume_point.id,
    ) as second:
        assert second.run_number == 2
        # fresh restart nodes, nums start again
        assert [node.num for node in second.snapshots("macro")] == [1]
        name, good = STREAM.registrations[0]
        second.add_snapshot(name, good)
        assert [node.num for node in second.history(name)] == [1, 2]
        assert len(second.workflow_snapshots()) == len(first_snapshots)
    engine = create_engine(url)
    with engine.connect() as connection:
        lineage = connection.execute(
            text(
                "SELECT number, resumed_from_workflow_snapshot_id"
                " FROM run ORDER BY number"
            )
        ).all()
    engine.dispose()
    assert [tuple(row) for row in lineage] == [(1, None), (2, resume_point.id)]
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=url, campaign="other"
    ) as other:
        assert other.run_number == 1
        assert other.workflow_snapshots() == []


@pytest.mark.parametrize(
    "stream",
    [macro_micro(3, num_micro=4, num_steps=2), ensemble(3, num_models=3)],
    ids=["macro_micro", "ensemble"],
)
def test_a_new_run_starts_from_the_graph_its_rows_hold(
    persistent_database_url: str, stream: Stream
) -> None:
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        writer = registry._writer
        built = _graph_state(writer.graph)
        read_back = _graph_state(registry._store.read(writer.load_graph))
        assert built == read_back
        # and goes on from it as MUSCLE3 does
        found = [
            len(registry.add_snapshot(instance, data))
            for instance, data in stream.registrations
        ]
    assert found == [len(step.workflow_snapshots) for step in run_oracle(stream)]


def _graph_state(graph: ActiveGraph) -> dict[str, Any]:
    """Everything an active graph holds, by row ids."""
    return {
        "nodes": {
            instance: [
                (
                    node.id,
                    node.num,
                    node.is_restart,
                    node.metadata,
                    node.peers,
                    node.peers_covered,
                    {
                        peer: [other.id for other in others]
                        for peer, others in node.consistent_peers.items()
                    },
                )
                for node in nodes
            ]
            for instance, nodes in graph.nodes.items()
        },
        "next_num": graph.next_num,
        "candidate_count": graph.candidate_count,
        "without_candidates": graph.instances_without_candidates,
    }


def test_resuming_from_an_unknown_workflow_snapshot(database_url: str) -> None:
    with pytest.raises(NotFoundError, match="no workflow snapshot 999"):
        SnapshotRegistry(
            STREAM.config, None, database_url=database_url, resumed_from=999
        )


def test_continuing_with_another_topology_is_refused(
    persistent_database_url: str, tmp_path: Path
) -> None:
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ):
        pass
    bigger = macro_micro(11, num_micro=4, num_steps=3)
    with pytest.raises(TopologyMismatchError, match="differ"):
        SnapshotRegistry(bigger.config, tmp_path, database_url=persistent_database_url)
    with SnapshotRegistry(
        bigger.config, tmp_path, database_url=persistent_database_url, new_run=True
    ) as registry:
        assert registry.run_number == 2


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SnapshotRegistry(STREAM.config, tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="no model"):
        SnapshotRegistry(v0_1.PartialConfiguration(), tmp_path)
    with pytest.raises(ConfigurationError, match="not a database URL"):
        SnapshotRegistry(STREAM.config, tmp_path, database_url="::nonsense::")
    no_instances = ymmsl.load(
        "ymmsl_version: v0.2\nmodels:\n  zero:\n    components:\n"
        "      a:\n        ports: {}\n        description: none of it\n"
        "        multiplicity: [3, 0]\n"
    )
    url = f"sqlite:///{tmp_path / 'zero.sqlite'}"
    with pytest.raises(ConfigurationError, match=r"model zero has no instances"):
        SnapshotRegistry(no_instances, tmp_path, database_url=url)
    assert not (tmp_path / "zero.sqlite").exists()


def test_a_second_writer_is_refused_with_the_holder_named(
    persistent_database_url: str, tmp_path: Path
) -> None:
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ):
        with pytest.raises(WriterConflictError) as refused:
            SnapshotRegistry(
                STREAM.config, tmp_path, database_url=persistent_database_url
            )
        message = str(refused.value)
        assert f"pid {os.getpid()} on {os.uname().nodename}" in message
        assert "since" in message
    # released on close
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ):
        pass


CHILD = textwrap.dedent(
    """
    import pickle, sys
    from snapreg import SnapshotRegistry
    stream = pickle.loads(sys.stdin.buffer.read())
    registry = SnapshotRegistry(stream.config, sys.argv[2], database_url=sys.argv[1])
    print("open", flush=True)
    for index, (instance, metadata) in enumerate(stream.registrations):
        registry.register_snapshot(instance, metadata)
        print("ack", index, flush=True)
    print("done", flush=True)
    sys.stdin.close()
    import time
    time.sleep(60)
    """
)


def _run_child_and_kill(url: str, folder: Path, kill_after: int) -> int:
    """Register in a child process, SIGKILL it after some acks; return how many."""
    import pickle

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(pickle.dumps(STREAM))
    child.stdin.close()
    acknowledged = 0
    try:
        for line in child.stdout:
            if line.startswith(b"ack"):
                acknowledged = int(line.split()[1]) + 1
                if acknowledged >= kill_after:
                    break
            if line.startswith(b"done"):
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # it went on until the kill landed: count what it acknowledged meanwhile
    for line in child.stdout.read().splitlines():
        if line.startswith(b"ack"):
            acknowledged = int(line.split()[1]) + 1
    return acknowledged


def _count(url: str, query: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow  # kills a child process
def test_acknowledged_registrations_survive_a_crash(
    persistent_database_url: str, tmp_path: Path
) -> None:
    kill_after = len(STREAM.registrations) // 2
    acknowledged = _run_child_and_kill(persistent_database_url, tmp_path, kill_after)
    assert acknowledged >= kill_after
    # Nothing acknowledged may be missing; the registration the child was in the
    # middle of when it died may have committed before its acknowledgement.
    stored = _count(persistent_database_url, "SELECT count(*) FROM submission")
    assert acknowledged <= stored <= acknowledged + 1
    steps = run_oracle(STREAM)
    # the dead writer's lease is taken over at once: same host, process gone
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ) as registry:
        assert registry.pending_count() == 0
        for name, good in STREAM.registrations[stored:]:
            registry.add_snapshot(name, good)
        expected = sorted(
            sorted(members) for step in steps for members in step.workflow_snapshots
        )
        assert (
            sorted(sorted(w.members) for w in registry.workflow_snapshots()) == expected
        )
        for instance in STREAM.instances():
            assert [n.num for n in registry.snapshots(instance)] == steps[-1].active[
                instance
            ]
    orphans = _count(
        persistent_database_url,
        "SELECT count(*) FROM submission s WHERE NOT EXISTS "
        "(SELECT 1 FROM snapshot_node n WHERE n.submission_id = s.id)",
    )
    assert _count(persistent_database_url, "SELECT count(*) FROM submission") == stored
    assert orphans == 0
    files = sorted(path.name for path in tmp_path.glob("snapshot_*.ymmsl"))
    assert len(files) == len(expected)


def test_worker_errors_reach_the_caller_and_nothing_is_lost(
    persistent_database_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    registry = SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    )

    def broken(self: Any, *args: Any) -> Any:
        raise RuntimeError("search exploded")

    monkeypatch.setattr(
        "snapreg.rules.graph.ActiveGraph.find_workflow_snapshots", broken
    )
    registry.start()
    name, good = STREAM.registrations[0]
    # acknowledged: stored unprocessed
    assert registry.register_snapshot(name, good) is True
    # processing is broken for good: later registrations are refused, not stored
    second_name, second = STREAM.registrations[1]
    with pytest.raises(WorkerError, match="search exploded"):
        register_or_raise(registry, second_name, second)
    registry.shutdown()  # never raises: MUSCLE3's manager must get on to join()
    with pytest.raises(WorkerError, match="search exploded"):
        registry.join()
    registry.close()  # join ended the run already: a no-op
    monkeypatch.undo()
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ) as reopened:
        assert [node.num for node in reopened.history(name)] == [1, 2]


def test_names_never_run_out(tmp_path: Path) -> None:
    from datetime import datetime

    allocator = NameAllocator(tmp_path)
    moment = datetime(2026, 1, 2, 3, 4, 5)
    (tmp_path / "snapshot_20260102_030405_7.ymmsl").write_text("taken")
    reserved: set[str] = set()
    for _ in range(250):
        path = allocator.allocate(moment, reserved)
        reserved.add(str(path))
        path.write_text("x")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 251
    assert "snapshot_20260102_030405.ymmsl" in names
    assert "snapshot_20260102_030405_250.ymmsl" in names


@pytest.mark.slow  # thousands of workflow snapshots
def test_more_than_a_hundred_files_in_a_second(tmp_path: Path) -> None:
    # ten micro instances with intermediate snapshots: thousands of combinations
    stream = macro_micro(0, num_micro=10)
    with SnapshotRegistry(stream.config, tmp_path) as registry:
        count = sum(
            len(registry.add_snapshot(*registration))
            for registration in stream.registrations
        )
        stored = len(registry.workflow_snapshots())
    assert count > 1000
    assert stored == count
    assert len(list(tmp_path.glob("snapshot_*.ymmsl"))) == count


def test_snapshot_metadata_class_is_accepted(database_url: str) -> None:
    with SnapshotRegistry(STREAM.config, None, database_url=database_url) as registry:
        registry.add_snapshot(
            "micro[0]", SnapshotMetadata(["x"], 1.0, 2.0, 3.0, {"f_i": [0]}, True, "f")
        )
        node = registry.snapshots("micro[0]")[-1]
        assert node.snapshot == SnapshotMetadata(
            ["x"], 1.0, 2.0, 3.0, {"f_i": [0]}, True, "f"
        )
        assert node.num == 2 and not node.is_restart and node.active


FORGETFUL_CHILD = textwrap.dedent(
    """
    import pickle, sys
    from snapreg import SnapshotRegistry
    stream = pickle.loads(sys.stdin.buffer.read())
    registry = SnapshotRegistry(stream.config, sys.argv[2], database_url=sys.argv[1])
    registry.start()
    registry.register_snapshot(*stream.registrations[0])
    print("acknowledged", flush=True)
    """  # and exits without shutdown(), join() or close()
)


@pytest.mark.slow  # a child process
def test_a_forgotten_worker_never_keeps_the_process_alive(
    persistent_database_url: str, tmp_path: Path
) -> None:
    import pickle

    finished = subprocess.run(
        [sys.executable, "-c", FORGETFUL_CHILD, persistent_database_url, str(tmp_path)],
        input=pickle.dumps(STREAM),
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert finished.returncode == 0, finished.stderr
    assert b"acknowledged" in finished.stdout
    # what was acknowledged is there
    with SnapshotRegistry(
        STREAM.config, tmp_path, database_url=persistent_database_url
    ) as registry:
        instance = STREAM.registrations[0][0]
        assert [node.num for node in registry.history(instance)] == [1, 2]
