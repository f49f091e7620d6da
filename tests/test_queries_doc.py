"""Every query in docs/queries.md gives the right answer, on SQLite and PostgreSQL.

A real campaign is recorded with the registry from generated streams: a macro-micro
campaign of four runs with lineage (runs 2 and 3 resume from the same workflow
snapshot of run 1, run 4 from one of run 2; run 2's counts are slightly perturbed
so that some conduits break consistency; run 4 stops early, as if it crashed) and
a one-run ensemble campaign. While
each registry is open, its public API (``history``, ``snapshots``,
``workflow_snapshots``, ``topology``) is recorded; every query's answer is then
checked against values computed from that record in Python, not just run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from snapreg import SnapshotRegistry
from snapreg.rules.consistency import ConnectionInfo, counts_consistent
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import Topology
from snapreg.tools.sql import ReadOnlyDatabase
from support.streams import Stream, ensemble, macro_micro, near_miss

QUERIES_FILE = Path(__file__).resolve().parent.parent / "docs" / "queries.md"
MARKED_QUERY = re.compile(
    r"<!-- query: (?P<name>[a-z0-9_]+)(?: dialect: (?P<dialect>sqlite|postgresql))?"
    r" -->\s*```sql\n(?P<sql>.*?)```",
    re.DOTALL,
)
MACRO_MICRO = "macro-micro"
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class DocQuery:
    """One query of the file: its name, the backend it is for (None: both), SQL."""

    name: str
    dialect: str | None
    sql: str


def documented_queries() -> list[DocQuery]:
    text = QUERIES_FILE.read_text()
    return [
        DocQuery(match["name"], match["dialect"], match["sql"])
        for match in MARKED_QUERY.finditer(text)
    ]


# ------------------------------------------------------------ the recording


@dataclass
class RecordedRun:
    """What the registry's API said about one run when it was closed."""

    campaign: str
    number: int
    id: int
    topology: Topology
    resumed_from: int | None
    history: dict[str, list[SnapshotNode]]
    active: dict[str, list[SnapshotNode]]

    def nodes(self) -> Iterator[SnapshotNode]:
        for nodes in self.history.values():
            yield from nodes


@dataclass
class Recording:
    """A recorded database and what the registry said about it."""

    url: str
    dialect: str
    runs: list[RecordedRun] = field(default_factory=list)
    workflow_snapshots: dict[str, list[WorkflowSnapshot]] = field(default_factory=dict)
    resume_point: WorkflowSnapshot | None = None

    def run_of_workflow_snapshot(self, workflow_snapshot_id: int) -> RecordedRun:
        for snapshots in self.workflow_snapshots.values():
            for snapshot in snapshots:
                if snapshot.id == workflow_snapshot_id:
                    return self.run(snapshot.campaign, snapshot.run)
        raise KeyError(workflow_snapshot_id)

    def run(self, campaign: str, number: int) -> RecordedRun:
        (found,) = (
            r for r in self.runs if (r.campaign, r.number) == (campaign, number)
        )
        return found

    def latest_runs(self) -> list[RecordedRun]:
        latest: dict[str, RecordedRun] = {}
        for run in self.runs:
            if run.campaign not in latest or run.number > latest[run.campaign].number:
                latest[run.campaign] = run
        return list(latest.values())


def record_run(
    recording: Recording,
    folder: Path,
    stream: Stream,
    campaign: str,
    resumed_from: WorkflowSnapshot | None = None,
) -> RecordedRun:
    with SnapshotRegistry(
        stream.config,
        folder,
        database_url=recording.url,
        campaign=campaign,
        new_run=resumed_from is not None,
        resumed_from=None if resumed_from is None else resumed_from.id,
    ) as registry:
        for instance, metadata in stream.registrations:
            registry.add_snapshot(instance, metadata)
        instances = registry.topology.instances
        run = RecordedRun(
            campaign,
            registry.run_number,
            registry.run_id,
            registry.topology,
            None if resumed_from is None else resumed_from.id,
            {instance: registry.history(instance) for instance in instances},
            {instance: registry.snapshots(instance) for instance in instances},
        )
        recording.workflow_snapshots[campaign] = registry.workflow_snapshots()
    recording.runs.append(run)
    return run


def record_campaigns(recording: Recording, folder: Path) -> None:
    first = record_run(
        recording,
        folder,
        macro_micro(101, num_micro=3, num_steps=6, skip_probability=0.2),
        MACRO_MICRO,
    )
    of_first = [
        snapshot
        for snapshot in recording.workflow_snapshots[MACRO_MICRO]
        if snapshot.run == first.number
    ]
    assert len(of_first) >= 3, "run 1 must give workflow snapshots to resume from"
    recording.resume_point = of_first[len(of_first) // 2]
    perturbed = near_miss(
        macro_micro(102, num_micro=3, num_steps=6), 103, num_perturbations=4
    )
    second = record_run(
        recording, folder, perturbed, MACRO_MICRO, recording.resume_point
    )
    record_run(
        recording,
        folder,
        macro_micro(104, num_micro=3, num_steps=4),
        MACRO_MICRO,
        recording.resume_point,
    )
    of_second = [
        snapshot
        for snapshot in recording.workflow_snapshots[MACRO_MICRO]
        if snapshot.run == second.number
    ]
    assert of_second, "run 2 must give a workflow snapshot to resume from"
    # The latest run stops two thirds of the way, as if it had crashed, so that
    # some instances have gone a while without a workflow snapshot.
    unfinished = macro_micro(105, num_micro=3, num_steps=6, skip_probability=0.3)
    unfinished = dataclasses.replace(
        unfinished,
        registrations=unfinished.registrations[
            : 2 * len(unfinished.registrations) // 3
        ],
    )
    record_run(recording, folder, unfinished, MACRO_MICRO, of_second[0])
    record_run(
        recording,
        folder,
        ensemble(106, num_models=3, num_samples=6, num_rounds=2),
        ENSEMBLE,
    )


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recording]:
    folder = tmp_path_factory.mktemp(f"campaign-{request.param}")
    if request.param == "sqlite":
        result = Recording(f"sqlite:///{folder / 'history.sqlite'}", "sqlite")
        record_campaigns(result, folder)
        yield result
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        result = Recording(server.url_for(name), "postgresql")
        record_campaigns(result, folder)
        yield result
    finally:
        server.drop_database(name)


# ------------------------------------------------------------------ helpers


def utc_time(value: Any) -> datetime:
    """A time from either backend (SQLite gives text) as an aware datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def component(instance: str) -> str:
    return instance.partition("[")[0]


def lineage_of(recording: Recording, run: RecordedRun) -> list[int]:
    if run.resumed_from is None:
        return [run.number]
    parent = recording.run_of_workflow_snapshot(run.resumed_from)
    return [*lineage_of(recording, parent), run.number]


def member_node_ids(recording: Recording) -> set[int]:
    return {
        node.id
        for snapshots in recording.workflow_snapshots.values()
        for snapshot in snapshots
        for node in snapshot.nodes
        if node.id is not None
    }


def assert_rows_match(
    rows: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    """Same rows in any order; floats compared with a tolerance."""

    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(
            f"{value:.6f}" if isinstance(value, float) else repr(value)
            for value in row.values()
        )

    assert len(rows) == len(expected)
    for got, want in zip(sorted(rows, key=key), sorted(expected, key=key), strict=True):
        assert got.keys() == want.keys()
        for column, value in want.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value), column
            else:
                assert got[column] == value, column


# ------------------------------------------------------------------- checks


def check_newest_workflow_snapshot_per_campaign(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    expected = []
    for campaign, snapshots in recording.workflow_snapshots.items():
        newest = max(snapshots, key=lambda snapshot: (snapshot.created_at, snapshot.id))
        expected.append(
            {
                "campaign_name": campaign,
                "run_number": newest.run,
                "workflow_snapshot_id": newest.id,
                "path": str(newest.path),
                "created_at": newest.created_at,
            }
        )
    for row in rows:
        row["created_at"] = utc_time(row["created_at"])
    assert rows == sorted(expected, key=lambda row: row["campaign_name"])


def check_instances_longest_without_workflow_snapshot(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    members = member_node_ids(recording)
    expected = []
    for run in recording.latest_runs():
        for instance, nodes in run.history.items():
            latest = max(node.snapshot.wallclock_time for node in nodes)
            last_member = max(
                (node.snapshot.wallclock_time for node in nodes if node.id in members),
                default=0.0,
            )
            expected.append(
                {
                    "campaign_name": run.campaign,
                    "instance": instance,
                    "latest_wallclock_time": latest,
                    "last_in_workflow_snapshot_at": last_member,
                    "seconds_without_workflow_snapshot": latest - last_member,
                }
            )
    assert_rows_match(rows, expected)
    gaps = [row["seconds_without_workflow_snapshot"] for row in rows]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[0] > 0


def breaking_conduits(run: RecordedRun) -> Counter[str]:
    """Per conduit, the compared pairs without an edge on which it disagrees.

    A pair was compared when the earlier node was still active when the later one
    was registered. Each compared pair is replayed with the consistency rules, seen
    from the later node as the registry saw it; that an edge exists exactly when no
    conduit disagrees is checked on the way.
    """
    broken: Counter[str] = Counter()
    nodes = sorted(run.nodes(), key=lambda node: node.id or 0)
    for later in nodes:
        later_name = str(later.instance)
        edges = {
            other.id for linked in later.consistent_peers.values() for other in linked
        }
        for earlier in nodes:
            earlier_name = str(earlier.instance)
            if (
                earlier.id is None
                or later.id is None
                or earlier.id >= later.id
                or earlier_name not in run.topology.peers(later_name)
            ):
                continue
            assert later.registered_at is not None
            if earlier.retired_at is not None and (
                earlier.retired_at < later.registered_at
            ):
                continue
            disagreeing = []
            for connection in run.topology.connections(later_name, earlier_name):
                if not counts_consistent(
                    later_name,
                    later.snapshot.port_message_counts,
                    earlier_name,
                    earlier.snapshot.port_message_counts,
                    earlier.is_restart,
                    [connection],
                ):
                    if connection.info & ConnectionInfo.SELF_IS_SENDING:
                        sender = f"{component(later_name)}.{connection.own_port}"
                        receiver = f"{component(earlier_name)}.{connection.peer_port}"
                    else:
                        sender = f"{component(earlier_name)}.{connection.peer_port}"
                        receiver = f"{component(later_name)}.{connection.own_port}"
                    disagreeing.append(f"{sender} -> {receiver}")
            assert (earlier.id in edges) == (not disagreeing), (earlier, later)
            broken.update(disagreeing)
    return broken


def check_conduits_breaking_consistency(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    per_campaign: dict[tuple[str, str], int] = Counter()
    for run in recording.runs:
        for conduit, pairs in breaking_conduits(run).items():
            per_campaign[(run.campaign, conduit)] += pairs
    expected = sorted(
        (
            {"campaign_name": campaign, "conduit": conduit, "inconsistent_pairs": pairs}
            for (campaign, conduit), pairs in per_campaign.items()
        ),
        key=lambda row: (-row["inconsistent_pairs"], row["campaign_name"]),
    )
    assert expected, "the recorded campaign must have inconsistent pairs"
    assert_rows_match(rows, expected)
    counts = [row["inconsistent_pairs"] for row in rows]
    assert counts == sorted(counts, reverse=True)


def check_snapshot_rate_per_instance(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    expected = []
    for run in recording.runs:
        for instance, nodes in run.history.items():
            real = [node for node in nodes if not node.is_restart]
            if not real:
                continue
            last = max(node.snapshot.wallclock_time for node in real)
            expected.append(
                {
                    "campaign_name": run.campaign,
                    "run_number": run.number,
                    "instance": instance,
                    "snapshots": len(real),
                    "wallclock_seconds": last,
                    "snapshots_per_hour": 3600.0 * len(real) / last,
                }
            )
    assert_rows_match(rows, expected)


def check_snapshots_per_clock_hour(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    counted: Counter[tuple[str, str]] = Counter()
    for run in recording.runs:
        for node in run.nodes():
            if node.is_restart:
                continue
            assert node.registered_at is not None
            hour = node.registered_at.astimezone(timezone.utc).strftime(
                "%Y-%m-%d %H:00"
            )
            counted[(hour, str(node.instance))] += 1
    assert_rows_match(
        rows,
        [
            {"hour": hour, "instance": instance, "snapshots": snapshots}
            for (hour, instance), snapshots in counted.items()
        ],
    )


def check_runs_resumed_from_workflow_snapshot(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    assert recording.resume_point is not None
    resumed = [
        run for run in recording.runs if run.resumed_from == recording.resume_point.id
    ]
    assert len(resumed) == 2
    expected = [
        {
            "campaign_name": run.campaign,
            "run_number": run.number,
            # restart nodes are written with the run, at the same moment
            "started_at": run.history[run.topology.instances[0]][0].registered_at,
            "lineage": " > ".join(map(str, lineage_of(recording, run))),
        }
        for run in resumed
    ]
    for row in rows:
        row["started_at"] = utc_time(row["started_at"])
    assert rows == expected


def check_lineage_of_campaign(recording: Recording, rows: list[dict[str, Any]]) -> None:
    expected = []
    for run in recording.runs:
        if run.campaign != MACRO_MICRO:
            continue
        lineage = lineage_of(recording, run)
        parent = (
            None
            if run.resumed_from is None
            else recording.run_of_workflow_snapshot(run.resumed_from).number
        )
        expected.append(
            {
                "run_number": run.number,
                "resumed_from_run_number": parent,
                "resumed_from_workflow_snapshot_id": run.resumed_from,
                "origin_run_number": lineage[0],
                "generation": len(lineage) - 1,
                "lineage": " > ".join(map(str, lineage)),
            }
        )
    assert [row["lineage"] for row in expected] == ["1", "1 > 2", "1 > 3", "1 > 2 > 4"]
    assert rows == expected


def check_resume_files_of_workflow_snapshot(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    assert recording.resume_point is not None
    expected = [
        {
            "instance": str(node.instance),
            "num": node.num,
            "snapshot_filename": node.snapshot.snapshot_filename,
        }
        for node in recording.resume_point.nodes
        if not node.is_restart
    ]
    assert expected
    assert {row["instance"]: row["snapshot_filename"] for row in expected} == {
        str(instance): str(path)
        for instance, path in recording.resume_point.resume.items()
    }
    assert_rows_match(rows, expected)


def check_message_counts_of_active_snapshots(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    expected = [
        {
            "run_number": run.number,
            "instance": instance,
            "num": node.num,
            "port": port,
            "slot": slot,
            "message_count": count,
        }
        for run in recording.runs
        if run.campaign == MACRO_MICRO
        for instance, nodes in run.active.items()
        for node in nodes
        for port, counts in node.snapshot.port_message_counts.items()
        for slot, count in enumerate(counts)
    ]
    assert expected
    assert_rows_match(rows, expected)


def check_one_count_from_json(recording: Recording, rows: list[dict[str, Any]]) -> None:
    expected = []
    for run in recording.runs:
        for node in run.history.get("macro", []):
            counts = node.snapshot.port_message_counts.get("state_out", [])
            expected.append(
                {
                    "snapshot_node_id": node.id,
                    "run_number": run.number,
                    "num": node.num,
                    "state_out_slot_0": counts[0] if counts else None,
                }
            )
    assert rows == sorted(expected, key=lambda row: row["snapshot_node_id"])


def check_trigger_frequency_per_component(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    counted: Counter[tuple[str, str, str]] = Counter()
    for run in recording.runs:
        for node in run.nodes():
            if not node.is_restart:
                for trigger in node.snapshot.triggers:
                    counted[(run.campaign, component(str(node.instance)), trigger)] += 1
    assert_rows_match(
        rows,
        [
            {
                "campaign_name": campaign,
                "component": name,
                "trigger_text": trigger,
                "snapshots": snapshots,
            }
            for (campaign, name, trigger), snapshots in counted.items()
        ],
    )


def check_snapshots_waiting_for_peers(
    recording: Recording, rows: list[dict[str, Any]]
) -> None:
    expected = [
        {
            "campaign_name": run.campaign,
            "run_number": run.number,
            "instance": instance,
            "num": node.num,
            "wallclock_time": node.snapshot.wallclock_time,
        }
        for run in recording.runs
        for instance, nodes in run.active.items()
        for node in nodes
        if not node.consistent
    ]
    assert expected, "the recorded campaign must have nodes waiting for peers"
    assert_rows_match(rows, expected)


CHECKS: dict[str, Callable[[Recording, list[dict[str, Any]]], None]] = {
    "newest_workflow_snapshot_per_campaign": (
        check_newest_workflow_snapshot_per_campaign
    ),
    "instances_longest_without_workflow_snapshot": (
        check_instances_longest_without_workflow_snapshot
    ),
    "conduits_breaking_consistency": check_conduits_breaking_consistency,
    "snapshot_rate_per_instance": check_snapshot_rate_per_instance,
    "snapshots_per_clock_hour": check_snapshots_per_clock_hour,
    "runs_resumed_from_workflow_snapshot": check_runs_resumed_from_workflow_snapshot,
    "lineage_of_campaign": check_lineage_of_campaign,
    "resume_files_of_workflow_snapshot": check_resume_files_of_workflow_snapshot,
    "message_counts_of_active_snapshots": check_message_counts_of_active_snapshots,
    "one_count_from_json": check_one_count_from_json,
    "trigger_frequency_per_component": check_trigger_frequency_per_component,
    "snapshots_waiting_for_peers": check_snapshots_waiting_for_peers,
}


# -------------------------------------------------------------------- tests


def test_every_documented_query_is_marked_and_checked() -> None:
    text = QUERIES_FILE.read_text()
    queries = documented_queries()
    assert text.count("```sql") == len(queries), "every sql block needs a marker"
    assert {query.name for query in queries} == set(CHECKS)
    assert len(CHECKS) >= 8
    for name in CHECKS:
        dialects = sorted(q.dialect or "both" for q in queries if q.name == name)
        assert dialects in (["both"], ["postgresql", "sqlite"]), name


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_documented_query_answers(recording: Recording, name: str) -> None:
    (query,) = (
        query
        for query in documented_queries()
        if query.name == name and query.dialect in (None, recording.dialect)
    )
    assert recording.resume_point is not None
    parameters = {
        "workflow_snapshot_id": recording.resume_point.id,
        "campaign_name": MACRO_MICRO,
    }
    used = {key: value for key, value in parameters.items() if f":{key}" in query.sql}
    with ReadOnlyDatabase(recording.url) as database:
        result = database.query(query.sql, used)
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    assert rows, f"{name} gives no rows on the recorded campaign"
    for row in rows:
        for column, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), column
    CHECKS[name](recording, rows)
