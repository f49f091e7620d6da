"""Group commit: many threads calling ``register_snapshot`` at once.

MUSCLE3's manager calls ``register_snapshot`` from one thread per instance
connection. Registrations that arrive together share a transaction, which stores
and processes them all. What must hold whatever the interleaving: every
registration is stored exactly once, each thread's in its order, acknowledged only
after its commit; the results are MUSCLE3's for the order in which they were
committed; and commits were shared.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from snapreg import SnapshotRegistry
from snapreg.storage.codecs import metadata_from_json
from snapreg.storage.engines import normalize_url
from support import torture
from support.entries import register_or_raise
from support.oracle import run_oracle
from support.streams import Stream, macro_micro

THREADS = 8


def _per_instance(stream: Stream) -> dict[str, list[dict[str, Any]]]:
    work: dict[str, list[dict[str, Any]]] = {}
    for instance, fields in stream.registrations:
        work.setdefault(instance, []).append(fields)
    return work


def _committed_order(url: str) -> list[tuple[str, dict[str, Any]]]:
    """The stored submissions in id order: the order they were processed in."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT instance, snapshot_metadata FROM submission ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    return [
        (
            instance,
            dataclasses.asdict(
                metadata_from_json(data if isinstance(data, dict) else json.loads(data))
            ),
        )
        for instance, data in rows
    ]


def test_concurrent_registrations_share_commits_and_lose_nothing(
    persistent_database_url: str,
) -> None:
    stream = macro_micro(
        41,
        num_micro=THREADS - 1,
        num_steps=60,
        micro_intermediate=False,
        macro_intermediate=True,
    )
    work = _per_instance(stream)
    assert len(work) == THREADS
    commits = [0]

    def count_commit(connection: Any) -> None:
        commits[0] += 1

    registry = SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    )
    registry.start()
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []
    acknowledged: Counter[str] = Counter()

    def register(instance: str, items: list[dict[str, Any]]) -> None:
        barrier.wait()
        try:
            for fields in items:
                register_or_raise(registry, instance, fields)
                acknowledged[instance] += 1
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    event.listen(Engine, "commit", count_commit)
    try:
        threads = [
            threading.Thread(target=register, args=item) for item in work.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        event.remove(Engine, "commit", count_commit)
    assert failures == []
    assert all(not thread.is_alive() for thread in threads)
    assert registry.pending_count() == 0
    found = Counter(snapshot.members for snapshot in registry.workflow_snapshots())
    registry.close()

    total = len(stream.registrations)
    assert sum(acknowledged.values()) == total
    # commits were shared: on average by two registrations at least
    assert commits[0] < total / 2, (commits[0], total)
    # every registration stored once, each instance's in the order it sent them
    order = _committed_order(persistent_database_url)
    assert len(order) == total
    for instance, items in work.items():
        assert [fields for name, fields in order if name == instance] == items

    # MUSCLE3, fed the registrations in the committed order, finds the same
    steps = run_oracle(Stream(stream.name, stream.config, order))
    expected = Counter(members for step in steps for members in step.workflow_snapshots)
    assert sum(expected.values()) > 0
    assert found == expected


KILL_SPEC = {
    "rng": 43,
    "num_micro": THREADS - 1,
    "num_steps": 150,
    "micro_intermediate": False,
    "macro_intermediate": True,
}
KILLS = 6


def _stored_per_instance(url: str) -> dict[str, list[dict[str, Any]]]:
    stored: dict[str, list[dict[str, Any]]] = {}
    for instance, fields in _committed_order(url):
        stored.setdefault(instance, []).append(fields)
    return stored


def _orphan_submissions(url: str) -> int:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM submission s WHERE NOT EXISTS"
                        " (SELECT 1 FROM snapshot_node n WHERE n.submission_id = s.id)"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.slow  # kills child processes
def test_group_commit_killed_at_random_loses_nothing(
    persistent_database_url: str,
) -> None:
    """SIGKILL a process whose 8 threads register at once, again and again.

    After every kill: what was acknowledged is stored, each instance's stored
    registrations are exactly its first ones, in order, once; the next process
    goes on from there. In the end MUSCLE3, fed the committed order, finds the
    workflow snapshots snapreg found, and no submission lacks its node.
    """
    stream = macro_micro(**KILL_SPEC)  # type: ignore[arg-type]
    work = _per_instance(stream)
    rng = random.Random(7)
    context = torture.forkserver()
    starts: dict[str, int] = {}
    kills = 0
    for round_number in range(KILLS + 1):
        name = f"snapreg-group-kill-{os.getpid()}-{round_number}"
        url = torture.with_application_name(persistent_database_url, name)
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=torture.group_commit_child, args=(url, KILL_SPEC, starts, sender)
        )
        child.start()
        sender.close()
        acknowledged: Counter[str] = Counter()
        kill_after = rng.randint(20, 120) if round_number < KILLS else None
        received = 0
        while True:
            assert receiver.poll(120), "the child went silent"
            instance, index = receiver.recv()
            if instance == "done":
                break
            acknowledged[instance] = max(acknowledged[instance], index + 1)
            received += 1
            if kill_after is not None and received >= kill_after:
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
                kills += 1
                break
        child.join(timeout=60)
        receiver.close()
        inspection = torture.inspection_engine(persistent_database_url)
        try:
            torture.wait_for_sessions_to_end(inspection, name)
        finally:
            inspection.dispose()
        stored = _stored_per_instance(persistent_database_url)
        for instance, items in work.items():
            have = stored.get(instance, [])
            assert have == items[: len(have)], instance  # a prefix: in order, once
            assert len(have) >= acknowledged[instance], instance
        starts = {instance: len(items) for instance, items in stored.items()}
    assert kills == KILLS
    assert _stored_per_instance(persistent_database_url) == work
    assert _orphan_submissions(persistent_database_url) == 0
    with SnapshotRegistry(
        stream.config, None, database_url=persistent_database_url
    ) as registry:
        found = Counter(snapshot.members for snapshot in registry.workflow_snapshots())
    order = _committed_order(persistent_database_url)
    steps = run_oracle(Stream(stream.name, stream.config, order))
    expected = Counter(members for step in steps for members in step.workflow_snapshots)
    assert sum(expected.values()) > 0
    assert found == expected
