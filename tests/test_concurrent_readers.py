"""Readers never block the writer and never see half a registration.

A real registry registers a realistic stream of a few hundred snapshots through
``register_snapshot`` (each stored and processed in one transaction)
while several other processes query the same database over and over through
snapreg's read-only path (:class:`snapreg.tools.sql.ReadOnlyDatabase`), on a SQLite file
and on PostgreSQL. Each read is one transaction of several statements, and what it
sees must be a state between two registrations: every workflow snapshot has exactly
one existing member per instance and its members are pairwise consistent, every
retired node was retired by a visible workflow snapshot, nums have no gaps, every
node's submission exists, and the views agree with the tables. No process may ever
meet "database is locked".
"""

from __future__ import annotations

import logging
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Empty
from typing import Any

import pytest

from snapreg import SnapshotRegistry
from snapreg.tools.sql import ReadOnlyDatabase, ReadOnlyTransaction
from support.entries import register_or_raise
from support.streams import macro_micro

STREAM = macro_micro(501, num_micro=3, num_steps=45)
READERS = 3
#: No process of this test lives longer than this many seconds.
TIME_LIMIT = 240.0

WORKFLOW_SNAPSHOT_SHAPES = """
SELECT
    workflow_snapshot.id,
    workflow_snapshot.run_id,
    count(member.snapshot_node_id) AS members,
    count(DISTINCT node.instance) AS instances,
    count(node.id) AS existing_nodes
FROM workflow_snapshot
LEFT JOIN workflow_snapshot_member AS member
    ON member.workflow_snapshot_id = workflow_snapshot.id
LEFT JOIN snapshot_node AS node ON node.id = member.snapshot_node_id
GROUP BY workflow_snapshot.id, workflow_snapshot.run_id
"""
INSTANCES_PER_RUN = (
    "SELECT run_id, count(*) FROM snapshot_node WHERE is_restart GROUP BY run_id"
)
MEMBER_PEERS_WITHOUT_EDGE = """
SELECT count(*)
FROM workflow_snapshot_member AS first_member
JOIN snapshot_node AS first_node ON first_node.id = first_member.snapshot_node_id
JOIN workflow_snapshot_member AS second_member
    ON second_member.workflow_snapshot_id = first_member.workflow_snapshot_id
JOIN snapshot_node AS second_node ON second_node.id = second_member.snapshot_node_id
JOIN instance_peer AS peer
    ON peer.run_id = first_node.run_id
    AND peer.instance = first_node.instance
    AND peer.peer_instance = second_node.instance
WHERE first_node.id < second_node.id
  AND NOT EXISTS (
      SELECT 1 FROM consistent_pair AS edge
      WHERE edge.lower_node_id = first_node.id
        AND edge.higher_node_id = second_node.id
  )
"""
RETIRED_WITHOUT_NEWER_MEMBER = """
SELECT count(*)
FROM snapshot_node AS retired
WHERE retired.retired_at IS NOT NULL
  AND NOT EXISTS (
      SELECT 1
      FROM workflow_snapshot_member AS member
      JOIN snapshot_node AS kept ON kept.id = member.snapshot_node_id
      WHERE kept.run_id = retired.run_id
        AND kept.instance = retired.instance
        AND kept.num > retired.num
  )
"""
NUM_GAPS = """
SELECT count(*)
FROM (
    SELECT run_id, instance
    FROM snapshot_node
    GROUP BY run_id, instance
    HAVING min(num) <> 1 OR max(num) <> count(*)
) AS gapped
"""
NODES_WITHOUT_SUBMISSION = """
SELECT count(*)
FROM snapshot_node AS node
LEFT JOIN submission ON submission.id = node.submission_id
WHERE NOT node.is_restart AND submission.id IS NULL
"""
COUNTS = """
SELECT
    (SELECT count(*) FROM snapshot_node) AS nodes,
    (SELECT count(*) FROM snapshot_node_overview) AS nodes_in_view,
    (SELECT count(*) FROM workflow_snapshot) AS workflow_snapshots,
    (SELECT count(*) FROM workflow_snapshot_member) AS members,
    (SELECT count(*) FROM workflow_snapshot_member_overview) AS members_in_view,
    (SELECT count(*) FROM consistent_pair) AS edges,
    (SELECT count(*) FROM submission) AS submissions
"""


@dataclass
class ReaderReport:
    """What one reader process saw."""

    reads: int = 0
    locked: int = 0
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    node_counts: list[int] = field(default_factory=list)
    workflow_snapshot_counts: list[int] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)


def check_one_state(transaction: ReadOnlyTransaction, report: ReaderReport) -> None:
    """Check every invariant on what one read transaction sees."""
    counts = dict(
        zip(
            transaction.query(COUNTS).columns,
            transaction.query(COUNTS).rows[0],
            strict=True,
        )
    )
    instances = dict(transaction.query(INSTANCES_PER_RUN).rows)
    for snapshot_id, run_id, members, distinct, existing in transaction.query(
        WORKFLOW_SNAPSHOT_SHAPES
    ).rows:
        expected = instances.get(run_id)
        if not (members == distinct == existing == expected):
            report.violations.append(
                f"workflow snapshot {snapshot_id}: {members} members, {distinct}"
                f" instances, {existing} existing nodes; the run has {expected}"
            )
    for label, statement in (
        ("member peers without an edge", MEMBER_PEERS_WITHOUT_EDGE),
        ("retired nodes without a newer member", RETIRED_WITHOUT_NEWER_MEMBER),
        ("instances with gaps in nums", NUM_GAPS),
        ("nodes without their submission", NODES_WITHOUT_SUBMISSION),
    ):
        found = transaction.query(statement).rows[0][0]
        if found:
            report.violations.append(f"{found} {label}")
    if counts["nodes"] != counts["nodes_in_view"]:
        report.violations.append(f"node counts differ: {counts}")
    if counts["members"] != counts["members_in_view"]:
        report.violations.append(f"member counts differ: {counts}")
    if counts["nodes"] - sum(instances.values()) > counts["submissions"]:
        report.violations.append(f"more nodes than submissions: {counts}")
    # the same snapshot of the database at the end of the transaction
    if transaction.query(COUNTS).rows[0][0] != counts["nodes"]:
        report.violations.append("the node count changed within one transaction")
    previous = report.node_counts[-1] if report.node_counts else 0
    if counts["nodes"] < previous:
        report.violations.append(f"node count went back from {previous}")
    report.node_counts.append(counts["nodes"])
    report.workflow_snapshot_counts.append(counts["workflow_snapshots"])


def read_once(database: ReadOnlyDatabase, report: ReaderReport) -> None:
    started = time.monotonic()
    try:
        with database.transaction() as transaction:
            check_one_state(transaction, report)
    except Exception as err:  # noqa: BLE001 - every failure is reported
        message = f"{type(err).__name__}: {err}"
        if "locked" in message.lower() or "busy" in message.lower():
            report.locked += 1
        if len(report.errors) < 10:
            report.errors.append(message)
    report.reads += 1
    report.read_seconds.append(time.monotonic() - started)


def read_until_stopped(
    url: str, stop: Event, deadline: float, results: multiprocessing.Queue[Any]
) -> None:
    """A reader process: read and check until told to stop, then once more."""
    report = ReaderReport()
    try:
        with ReadOnlyDatabase(url) as database:
            while not stop.is_set() and time.time() < deadline:
                read_once(database, report)
            read_once(database, report)  # the final state
    except Exception as err:  # noqa: BLE001 - reported to the test
        report.errors.append(f"{type(err).__name__}: {err}")
    results.put(asdict(report))


def final_counts(url: str) -> tuple[int, int]:
    with ReadOnlyDatabase(url) as database:
        nodes, snapshots = database.query(
            "SELECT (SELECT count(*) FROM snapshot_node),"
            " (SELECT count(*) FROM workflow_snapshot)"
        ).rows[0]
    return int(nodes), int(snapshots)


@pytest.mark.slow  # readers in child processes
def test_readers_in_other_processes_see_only_whole_registrations(
    persistent_database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="snapreg")
    url = persistent_database_url
    registry = SnapshotRegistry(STREAM.config, tmp_path, database_url=url)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results: multiprocessing.Queue[Any] = context.Queue()
    deadline = time.time() + TIME_LIMIT
    readers = [
        context.Process(
            target=read_until_stopped,
            args=(url, stop, deadline, results),
            name=f"snapreg-reader-{index}",
        )
        for index in range(READERS)
    ]
    reports: list[dict[str, Any]] = []
    acknowledgements: list[float] = []
    try:
        for reader in readers:
            reader.start()
        # let every reader take a first look at the empty run before writing
        time.sleep(2.0)
        registry.start()
        started = time.monotonic()
        for instance, metadata in STREAM.registrations:
            before = time.monotonic()
            register_or_raise(registry, instance, metadata)
            acknowledgements.append(time.monotonic() - before)
            time.sleep(0.005)
            assert time.time() < deadline, "the writer ran out of time"
        registry.shutdown()
        registry.join(timeout=max(1.0, deadline - time.time()))
        assert not registry.is_alive(), "the worker did not finish in time"
        writing = time.monotonic() - started
        registry.close()
        stop.set()
        for _ in readers:
            reports.append(results.get(timeout=max(1.0, deadline - time.time())))
    except Empty:
        pytest.fail("a reader did not report in time")
    finally:
        stop.set()
        registry.close()
        for reader in readers:
            reader.join(timeout=30)
            if reader.is_alive():
                reader.terminate()
                reader.join(timeout=5)
            if reader.is_alive():
                reader.kill()
                reader.join(timeout=5)

    nodes, snapshots = final_counts(url)
    assert nodes == len(STREAM.registrations) + len(STREAM.instances())
    assert snapshots > 0
    reads = [report["reads"] for report in reports]
    seen = sorted({count for report in reports for count in report["node_counts"]})
    read_seconds = [s for report in reports for s in report["read_seconds"]]
    print(
        f"\n{url.split(':')[0]}: {len(STREAM.registrations)} registrations in"
        f" {writing:.1f} s ({snapshots} workflow snapshots); acknowledgement"
        f" median {statistics.median(acknowledgements) * 1000:.1f} ms, max"
        f" {max(acknowledgements) * 1000:.1f} ms; {READERS} readers made {reads}"
        f" reads (median {statistics.median(read_seconds) * 1000:.0f} ms, max"
        f" {max(read_seconds) * 1000:.0f} ms) and saw {len(seen)} different states"
    )
    for report in reports:
        assert report["locked"] == 0, report["errors"]
        assert report["errors"] == []
        assert report["violations"] == []
        # the last read, after the writer closed, sees everything
        assert report["node_counts"][-1] == nodes
        assert report["workflow_snapshot_counts"][-1] == snapshots
        assert report["reads"] >= 3
    # the readers did look while the writer was half way
    assert any(0 < count < nodes for count in seen), seen
    assert len(seen) >= 3
    noisy = [
        record.getMessage()
        for record in caplog.records
        if "locked" in record.getMessage().lower()
        or "transient" in record.getMessage().lower()
    ]
    assert noisy == []
