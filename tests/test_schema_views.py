"""The schema users query: views, per-run topology rows, comments and docs/schema.md.

The views of migration 0002 are checked row by row against what the registry's
Python API says about a recorded campaign, on SQLite and PostgreSQL: a macro-micro
model whose macro is replicated (two-dimensional micros, so vector ports compare
one slot), a resumed second run with perturbed counts, and a chain of
multi-instance components (ports of equal dimension compare every slot).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from snapreg import SnapshotRegistry
from snapreg.rules.consistency import ConnectionInfo
from snapreg.rules.instances import last_index
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import Topology
from snapreg.storage.engines import create_database_engine
from snapreg.storage.schema import Base
from snapreg.storage.versions import downgrade_engine, upgrade_engine
from snapreg.tools.run_graph import RecordedNode
from support.streams import Stream, chain, macro_micro, near_miss

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "schema.md"

VIEW_COLUMNS = {
    "snapshot_node_overview": [
        "snapshot_node_id",
        "campaign_id",
        "campaign_name",
        "run_id",
        "run_number",
        "instance",
        "component",
        "num",
        "is_restart",
        "is_final",
        "triggers",
        "simulation_time",
        "next_simulation_time",
        "wallclock_time",
        "snapshot_filename",
        "registered_at",
        "retired_at",
        "is_active",
        "is_locally_consistent",
        "workflow_snapshot_count",
    ],
    "workflow_snapshot_member_overview": [
        "workflow_snapshot_id",
        "workflow_snapshot_path",
        "workflow_snapshot_created_at",
        "campaign_id",
        "campaign_name",
        "run_id",
        "run_number",
        "snapshot_node_id",
        "instance",
        "num",
        "is_restart",
        "is_final",
        "simulation_time",
        "wallclock_time",
        "snapshot_filename",
    ],
    "run_lineage": [
        "run_id",
        "campaign_id",
        "campaign_name",
        "run_number",
        "model_name",
        "started_at",
        "snapshot_folder",
        "resumed_from_workflow_snapshot_id",
        "resumed_from_workflow_snapshot_path",
        "resumed_from_run_id",
        "resumed_from_run_number",
        "origin_run_number",
        "generation",
        "lineage",
    ],
    "snapshot_message_count": [
        "snapshot_node_id",
        "run_id",
        "instance",
        "num",
        "port",
        "slot",
        "message_count",
    ],
    "snapshot_trigger": [
        "snapshot_node_id",
        "run_id",
        "instance",
        "num",
        "trigger_index",
        "trigger_text",
    ],
}


@dataclass
class RecordedRun:
    """A run and what the registry's API said about it before it closed."""

    campaign: str
    number: int
    id: int
    topology: Topology
    history: dict[str, list[SnapshotNode]]
    active: dict[str, list[SnapshotNode]]

    def nodes(self) -> Iterator[SnapshotNode]:
        for nodes in self.history.values():
            yield from nodes


@dataclass
class Recording:
    url: str
    runs: list[RecordedRun] = field(default_factory=list)
    workflow_snapshots: list[WorkflowSnapshot] = field(default_factory=list)


def record_run(
    recording: Recording,
    folder: Path,
    stream: Stream,
    campaign: str,
    resumed_from: int | None = None,
) -> list[WorkflowSnapshot]:
    with SnapshotRegistry(
        stream.config,
        folder,
        database_url=recording.url,
        campaign=campaign,
        new_run=resumed_from is not None,
        resumed_from=resumed_from,
    ) as registry:
        for instance, metadata in stream.registrations:
            registry.add_snapshot(instance, metadata)
        instances = registry.topology.instances
        recording.runs.append(
            RecordedRun(
                campaign,
                registry.run_number,
                registry.run_id,
                registry.topology,
                {instance: registry.history(instance) for instance in instances},
                {instance: registry.snapshots(instance) for instance in instances},
            )
        )
        return registry.workflow_snapshots()


def record_campaigns(recording: Recording, folder: Path) -> None:
    replicated = macro_micro(201, num_micro=2, num_steps=4, macro_replicas=2)
    first = record_run(recording, folder, replicated, "replicated")
    assert first, "the first run must find workflow snapshots"
    perturbed = near_miss(
        macro_micro(202, num_micro=2, num_steps=4, macro_replicas=2),
        203,
        num_perturbations=4,
    )
    both = record_run(recording, folder, perturbed, "replicated", first[0].id)
    chained = chain(204, length=3, num_steps=4, multiplicity=2, feedback=True)
    recording.workflow_snapshots = both + record_run(
        recording, folder, chained, "chain"
    )


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recording]:
    folder = tmp_path_factory.mktemp(f"views-{request.param}")
    if request.param == "sqlite":
        result = Recording(f"sqlite:///{folder / 'views.sqlite'}")
        record_campaigns(result, folder)
        yield result
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        result = Recording(server.url_for(name))
        record_campaigns(result, folder)
        yield result
    finally:
        server.drop_database(name)


@pytest.fixture
def engine(recording: Recording) -> Iterator[Engine]:
    database = create_database_engine(recording.url, read_only=True)
    yield database
    database.dispose()


def rows_of(engine: Engine, statement: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(text(statement))]


def utc_time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def from_json(value: Any) -> Any:
    """A JSON column's value: text on SQLite, already decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


# ------------------------------------------------------------------- views


def test_views_have_the_documented_columns(engine: Engine) -> None:
    with engine.connect() as connection:
        for view, columns in VIEW_COLUMNS.items():
            result = connection.execute(text(f"SELECT * FROM {view} LIMIT 0"))
            assert list(result.keys()) == columns, view
    assert set(inspect(engine).get_view_names()) == set(VIEW_COLUMNS)


def test_snapshot_node_overview_matches_the_registry(
    recording: Recording, engine: Engine
) -> None:
    rows = {
        row["snapshot_node_id"]: row
        for row in rows_of(engine, "SELECT * FROM snapshot_node_overview")
    }
    membership: dict[int, int] = {}
    for snapshot in recording.workflow_snapshots:
        for member in snapshot.nodes:
            assert member.id is not None
            membership[member.id] = membership.get(member.id, 0) + 1
    seen: set[tuple[bool, bool]] = set()
    expected_ids = set()
    for run in recording.runs:
        active_consistent = {
            node.id: node.consistent for nodes in run.active.values() for node in nodes
        }
        by_id = {node.id: node for node in run.nodes()}
        for node in run.nodes():
            assert node.id is not None
            expected_ids.add(node.id)
            row = rows[node.id]
            instance = str(node.instance)
            metadata = node.snapshot
            assert (row["campaign_name"], row["run_id"], row["run_number"]) == (
                run.campaign,
                run.id,
                run.number,
            )
            assert row["instance"] == instance
            assert row["component"] == instance.partition("[")[0]
            assert row["num"] == node.num
            assert bool(row["is_restart"]) == node.is_restart
            assert bool(row["is_final"]) == metadata.is_final_snapshot
            assert from_json(row["triggers"]) == list(metadata.triggers)
            assert row["wallclock_time"] == pytest.approx(metadata.wallclock_time)
            if math.isnan(metadata.timestamp):
                assert row["simulation_time"] is None
            else:
                assert row["simulation_time"] == pytest.approx(metadata.timestamp)
            assert row["next_simulation_time"] == metadata.next_timestamp
            assert row["snapshot_filename"] == metadata.snapshot_filename
            assert utc_time(row["registered_at"]) == node.registered_at
            assert utc_time(row["retired_at"]) == node.retired_at
            assert bool(row["is_active"]) == node.active
            assert row["workflow_snapshot_count"] == membership.get(node.id, 0)
            if node.active:
                consistent = active_consistent[node.id]
            else:
                consistent = all(
                    any(
                        by_id[linked.id].active
                        for linked in node.consistent_peers.get(peer, [])
                    )
                    for peer in node.peers
                )
            assert bool(row["is_locally_consistent"]) == consistent, node
            seen.add((node.active, consistent))
    assert set(rows) == expected_ids
    assert {(True, True), (True, False), (False, False)} <= seen


def test_workflow_snapshot_member_overview_matches_the_registry(
    recording: Recording, engine: Engine
) -> None:
    rows = rows_of(engine, "SELECT * FROM workflow_snapshot_member_overview")
    found: dict[int, set[tuple[Any, ...]]] = {}
    for row in rows:
        found.setdefault(row["workflow_snapshot_id"], set()).add(
            (
                row["workflow_snapshot_path"],
                utc_time(row["workflow_snapshot_created_at"]),
                row["campaign_name"],
                row["run_number"],
                row["instance"],
                row["num"],
                bool(row["is_restart"]),
                row["snapshot_filename"],
            )
        )
    expected = {
        snapshot.id: {
            (
                str(snapshot.path),
                snapshot.created_at,
                snapshot.campaign,
                snapshot.run,
                str(node.instance),
                node.num,
                node.is_restart,
                node.snapshot.snapshot_filename,
            )
            for node in snapshot.nodes
        }
        for snapshot in recording.workflow_snapshots
    }
    assert found == expected


def test_run_lineage_names_where_each_run_came_from(
    recording: Recording, engine: Engine
) -> None:
    rows = rows_of(
        engine,
        "SELECT campaign_name, run_number, resumed_from_run_number, generation,"
        " lineage, origin_run_number, resumed_from_workflow_snapshot_path"
        " FROM run_lineage ORDER BY campaign_name, run_number",
    )
    resume_point = next(
        snapshot
        for snapshot in recording.workflow_snapshots
        if snapshot.campaign == "replicated" and snapshot.run == 1
    )
    assert rows == [
        {
            "campaign_name": "chain",
            "run_number": 1,
            "resumed_from_run_number": None,
            "generation": 0,
            "lineage": "1",
            "origin_run_number": 1,
            "resumed_from_workflow_snapshot_path": None,
        },
        {
            "campaign_name": "replicated",
            "run_number": 1,
            "resumed_from_run_number": None,
            "generation": 0,
            "lineage": "1",
            "origin_run_number": 1,
            "resumed_from_workflow_snapshot_path": None,
        },
        {
            "campaign_name": "replicated",
            "run_number": 2,
            "resumed_from_run_number": 1,
            "generation": 1,
            "lineage": "1 > 2",
            "origin_run_number": 1,
            "resumed_from_workflow_snapshot_path": str(resume_point.path),
        },
    ]


def test_message_counts_and_triggers_unnest_to_exactly_what_was_reported(
    recording: Recording, engine: Engine
) -> None:
    counts: dict[int, dict[str, dict[int, int]]] = {}
    for row in rows_of(engine, "SELECT * FROM snapshot_message_count"):
        by_slot = counts.setdefault(row["snapshot_node_id"], {}).setdefault(
            row["port"], {}
        )
        assert row["slot"] not in by_slot
        by_slot[row["slot"]] = row["message_count"]
    triggers: dict[int, dict[int, str]] = {}
    for row in rows_of(engine, "SELECT * FROM snapshot_trigger"):
        triggers.setdefault(row["snapshot_node_id"], {})[row["trigger_index"]] = row[
            "trigger_text"
        ]
    nodes = [node for run in recording.runs for node in run.nodes()]
    for node in nodes:
        assert node.id is not None
        reported = {
            port: dict(enumerate(slots))
            for port, slots in node.snapshot.port_message_counts.items()
            if slots
        }
        assert counts.pop(node.id, {}) == reported, node
        assert triggers.pop(node.id, {}) == dict(enumerate(node.snapshot.triggers))
    assert counts == {} and triggers == {}
    assert any(len(node.snapshot.port_message_counts) > 1 for node in nodes)


def expected_conduit_rows(run: RecordedRun) -> set[tuple[Any, ...]]:
    """instance_conduit as the consistency rules see each pair of peers."""
    rows = set()
    for instance in run.topology.instances:
        for peer in run.topology.peers(instance):
            for connection in run.topology.connections(instance, peer):
                if not connection.info & ConnectionInfo.SELF_IS_SENDING:
                    continue
                own_slot: int | None = None
                peer_slot: int | None = None
                if connection.info & ConnectionInfo.SELF_IS_VECTOR:
                    own_slot, peer_slot = last_index(peer), 0
                elif connection.info & ConnectionInfo.PEER_IS_VECTOR:
                    own_slot, peer_slot = 0, last_index(instance)
                sender = instance.partition("[")[0]
                receiver = peer.partition("[")[0]
                rows.add(
                    (
                        run.id,
                        instance,
                        peer,
                        f"{sender}.{connection.own_port} ->"
                        f" {receiver}.{connection.peer_port}",
                        connection.own_port,
                        own_slot,
                        connection.peer_port,
                        peer_slot,
                    )
                )
    return rows


def topology_rows(engine: Engine) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    with engine.connect() as connection:
        peers = {
            tuple(row)
            for row in connection.execute(
                text("SELECT run_id, instance, peer_instance FROM instance_peer")
            )
        }
        conduits = {
            tuple(row)
            for row in connection.execute(
                text(
                    "SELECT run_id, sender_instance, receiver_instance, conduit,"
                    " sending_port, sending_slot, receiving_port, receiving_slot"
                    " FROM instance_conduit"
                )
            )
        }
    return peers, conduits


def test_peers_and_conduits_of_each_run_match_the_topology(
    recording: Recording, engine: Engine
) -> None:
    peers, conduits = topology_rows(engine)
    assert peers == {
        (run.id, instance, peer)
        for run in recording.runs
        for instance in run.topology.instances
        for peer in run.topology.peers(instance)
    }
    expected = set().union(*(expected_conduit_rows(run) for run in recording.runs))
    assert conduits == expected
    slots = {(row[5] is None, row[7] is None) for row in conduits}
    assert slots == {(True, True), (False, False)}, "both slot rules are exercised"


# -------------------------------------------------------------- migrations


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def test_upgrading_fills_peers_and_conduits_of_runs_made_before(
    fresh_url: str, tmp_path: Path
) -> None:
    recording = Recording(fresh_url)
    record_run(recording, tmp_path, macro_micro(301, num_micro=2, num_steps=2), "early")
    record_run(recording, tmp_path, chain(302, length=2, multiplicity=3), "chain")
    engine = create_database_engine(fresh_url)
    try:
        written = topology_rows(engine)
        assert all(written)
        downgrade_engine(engine, "0001_initial")
        inspector = inspect(engine)
        assert inspector.get_view_names() == []
        assert not {"instance_peer", "instance_conduit"} & set(
            inspector.get_table_names()
        )
        upgrade_engine(engine)
        assert topology_rows(engine) == written
        with engine.connect() as connection:
            consistent = connection.execute(
                text(
                    "SELECT count(*) FROM snapshot_node_overview"
                    " WHERE is_active AND is_locally_consistent"
                )
            ).scalar_one()
        assert consistent > 0
    finally:
        engine.dispose()


# ------------------------------------------------------------ documentation


def test_every_table_and_column_has_a_comment() -> None:
    for table in Base.metadata.tables.values():
        assert table.comment, table.name
        for column in table.columns:
            assert column.comment, f"{table.name}.{column.name}"


@pytest.mark.postgres
def test_postgresql_holds_the_comments(postgres_url: str) -> None:
    engine = create_database_engine(postgres_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.tables.values():
            assert inspector.get_table_comment(table.name)["text"] == table.comment
            comments = {
                column["name"]: column.get("comment")
                for column in inspector.get_columns(table.name)
            }
            assert comments == {column.name: column.comment for column in table.columns}
    finally:
        engine.dispose()


def documented_columns(section: str) -> list[str]:
    """The backticked names in the first cell of each row of a section's table."""
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)


def schema_sections() -> dict[str, str]:
    text = SCHEMA_FILE.read_text()
    parts = re.split(r"^### `([a-z_]+)`.*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_schema_doc_describes_every_table_view_and_column() -> None:
    sections = schema_sections()
    tables = {table.name: table for table in Base.metadata.tables.values()}
    assert set(sections) == set(tables) | set(VIEW_COLUMNS)
    for name, table in tables.items():
        assert documented_columns(sections[name]) == [c.name for c in table.columns]
    for view, columns in VIEW_COLUMNS.items():
        assert documented_columns(sections[view]) == columns


def test_schema_doc_has_a_diagram_of_every_table() -> None:
    text = SCHEMA_FILE.read_text()
    (diagram,) = re.findall(r"```mermaid\n(erDiagram\n.*?)```", text, re.DOTALL)
    entities = set(re.findall(r"^    ([a-z_]+) \{$", diagram, re.MULTILINE))
    assert entities == set(Base.metadata.tables)
    for table in Base.metadata.tables.values():
        for foreign_key in table.foreign_keys:
            pair = {table.name, foreign_key.column.table.name}
            assert any(
                pair <= set(re.findall(r"[a-z_]+", line))
                for line in diagram.splitlines()
                if "--" in line
            ), f"no relationship line for {table.name} -> {foreign_key.column}"


#: What MUSCLE3's wallclock_time counts: its checkpointing documentation takes
#: wallclock checkpoint times as "seconds since the initialization of
#: muscle_manager", and libmuscle reports the manager's elapsed time.
WALLCLOCK_MEANING = "Seconds since muscle_manager started (elapsed wallclock time)."


def test_wallclock_time_is_described_as_muscle3_means_it_everywhere() -> None:
    assert Base.metadata.tables["snapshot_node"].c.wallclock_time.comment == (
        WALLCLOCK_MEANING
    )
    documented = re.findall(
        r"^\| `wallclock_time` \|(.*)\|$", SCHEMA_FILE.read_text(), re.MULTILINE
    )
    assert len(documented) == 3  # snapshot_node and two views
    assert all(WALLCLOCK_MEANING in row for row in documented), documented
    for described in (SnapshotMetadata, RecordedNode):
        docstring = " ".join((described.__doc__ or "").split())
        assert f"wallclock_time: {WALLCLOCK_MEANING}" in docstring, described
    root = SCHEMA_FILE.parent.parent
    wrong = [
        str(path.relative_to(root))
        for folder in ("src", "docs", "migrations")
        for path in (root / folder).rglob("*")
        if path.suffix in (".py", ".md")
        and "since the instance started" in path.read_text()
        and path.name != "0004_wallclock_comment.py"  # says what it corrects
    ]
    assert wrong == ["migrations/versions/0001_initial.py"]  # history stays as it was
