"""One run's snapshot graph as recorded, read in a few queries, for looking at it.

``snapreg explain`` and ``snapreg plot`` look at the same thing: the nodes of one
run of a campaign, the consistent pairs between them and the workflow snapshots
found from them, together with the run's topology. :func:`load_run_graph` reads
exactly that, read-only, in one transaction, with a constant number of queries
whatever the size of the run, into plain objects that outlive the session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from snapreg.errors import NotFoundError
from snapreg.rules.topology import Topology
from snapreg.storage import queries, schema
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools.reader import campaign_name, topology_from_signature


@dataclass(frozen=True)
class RecordedNode:
    """One snapshot node as the database holds it.

    Attributes:
        id: Row id; grows with registration order.
        instance: The instance, e.g. ``micro[3]``.
        num: 1 for the restart node, then 2, 3, ...
        is_restart: Whether it is the "restart from scratch" placeholder.
        is_final: Whether it is a final snapshot.
        simulation_time: Its simulation time; None when it has none.
        wallclock_time: Seconds since muscle_manager started (elapsed wallclock time).
        triggers: Why it was taken.
        port_message_counts: Port name to message count per slot.
        snapshot_filename: The file the instance saved (empty for a restart node).
        active: Whether it still takes part in consistency checks.
    """

    id: int
    instance: str
    num: int
    is_restart: bool
    is_final: bool
    simulation_time: float | None
    wallclock_time: float
    triggers: tuple[str, ...]
    port_message_counts: dict[str, list[int]]
    snapshot_filename: str
    active: bool


@dataclass(frozen=True)
class RecordedWorkflowSnapshot:
    """A workflow snapshot of the run, with the ids of its member nodes.

    Attributes:
        id: Row id (unique in the database).
        created_at: When it was found (UTC).
        path: Its yMMSL file.
        member_ids: The ids of its member nodes, one per instance.
    """

    id: int
    created_at: datetime
    path: str
    member_ids: tuple[int, ...]


@dataclass(frozen=True)
class RunGraph:
    """The snapshot graph of one run: nodes, consistent pairs, workflow snapshots.

    Attributes:
        campaign: The campaign's name.
        run: The run's number within the campaign.
        runs: How many runs the campaign has.
        topology: The run's components, multiplicities and conduits.
        nodes: The loaded nodes by id, in registration order.
        edges: Consistent pairs between loaded nodes, as (lower id, higher id).
        workflow_snapshots: The run's workflow snapshots, oldest first.
        newest_in_campaign: The campaign's newest workflow snapshot of any run, as
            (id, run number), or None when it has none.
    """

    campaign: str
    run: int
    runs: int
    topology: Topology
    nodes: dict[int, RecordedNode]
    edges: list[tuple[int, int]]
    workflow_snapshots: list[RecordedWorkflowSnapshot]
    newest_in_campaign: tuple[int, int] | None
    _by_instance: dict[str, list[RecordedNode]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for node in self.nodes.values():
            self._by_instance.setdefault(node.instance, []).append(node)
        for found in self._by_instance.values():
            found.sort(key=lambda node: node.num)

    @property
    def instances(self) -> list[str]:
        """Every instance of the run's model, components in model order."""
        return list(self.topology.instances)

    def nodes_of(self, instance: str) -> list[RecordedNode]:
        """The loaded nodes of an instance, ascending num."""
        return self._by_instance.get(instance, [])

    def consistent_peers(self) -> dict[int, dict[str, list[RecordedNode]]]:
        """Per node id, per peer instance, the loaded nodes it is consistent with."""
        linked: dict[int, dict[str, list[RecordedNode]]] = {}
        for lower, higher in self.edges:
            first, second = self.nodes[lower], self.nodes[higher]
            linked.setdefault(lower, {}).setdefault(second.instance, []).append(second)
            linked.setdefault(higher, {}).setdefault(first.instance, []).append(first)
        for peers in linked.values():
            for found in peers.values():
                found.sort(key=lambda node: node.num)
        return linked


def load_run_graph(
    database_url: str,
    campaign: str | None,
    *,
    run: int | None = None,
    active_only: bool = False,
) -> RunGraph:
    """Read one run's snapshot graph; never change the database.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the only one there is.
        run: The run's number; default: the campaign's newest run.
        active_only: Load only active nodes and the pairs between them (what the
            registry still compares), instead of the whole history of the run.

    Raises:
        NotFoundError: no such database, campaign or run, or a campaign without
            runs.
        SchemaVersionError: the schema does not match this snapreg.
        StorageUnavailableError: the database cannot be read.
    """
    with ReadOnlyStore(database_url, check_schema=True) as store:
        return store.read(
            lambda session: _load(
                session,
                campaign_name(session, campaign, store.location),
                run,
                active_only,
            )
        )


def _load(
    session: Session, campaign: str, run_number: int | None, active_only: bool
) -> RunGraph:
    campaign_row = queries.campaign_row(session, campaign)
    runs = session.scalars(
        select(schema.RunRow)
        .where(schema.RunRow.campaign_id == campaign_row.id)
        .order_by(schema.RunRow.number)
    ).all()
    if not runs:
        raise NotFoundError(f"campaign {campaign!r} has no runs yet")
    if run_number is None:
        run_row = runs[-1]
    else:
        matching = [row for row in runs if row.number == run_number]
        if not matching:
            raise NotFoundError(
                f"campaign {campaign!r} has no run {run_number} (runs: 1 to"
                f" {runs[-1].number})"
            )
        run_row = matching[0]
    node = schema.SnapshotNodeRow
    node_query = select(node).where(node.run_id == run_row.id).order_by(node.id)
    if active_only:
        node_query = node_query.where(node.retired_at.is_(None))
    nodes = {row.id: _recorded(row) for row in session.scalars(node_query)}
    return RunGraph(
        campaign=campaign,
        run=run_row.number,
        runs=len(runs),
        topology=topology_from_signature(run_row.topology),
        nodes=nodes,
        edges=queries.run_edges(session, run_row.id, active_only=active_only),
        workflow_snapshots=_workflow_snapshots(session, run_row.id),
        newest_in_campaign=_newest_in_campaign(session, campaign_row.id),
    )


def _recorded(row: schema.SnapshotNodeRow) -> RecordedNode:
    simulation_time = row.simulation_time
    if simulation_time is not None and math.isnan(simulation_time):
        simulation_time = None  # stored as NULL; a NaN would only come from SQL
    return RecordedNode(
        id=row.id,
        instance=row.instance,
        num=row.num,
        is_restart=row.is_restart,
        is_final=row.is_final,
        simulation_time=simulation_time,
        wallclock_time=row.wallclock_time,
        triggers=tuple(row.triggers),
        port_message_counts={
            port: list(counts) for port, counts in row.port_message_counts.items()
        },
        snapshot_filename=row.snapshot_filename,
        active=row.retired_at is None,
    )


def _workflow_snapshots(
    session: Session, run_id: int
) -> list[RecordedWorkflowSnapshot]:
    snapshot = schema.WorkflowSnapshotRow
    member = schema.WorkflowSnapshotMemberRow
    headers = session.execute(
        select(snapshot.id, snapshot.created_at, snapshot.path)
        .where(snapshot.run_id == run_id)
        .order_by(snapshot.id)
    ).all()
    members: dict[int, list[int]] = {}
    for snapshot_id, node_id in session.execute(
        select(member.workflow_snapshot_id, member.snapshot_node_id)
        .join(snapshot, snapshot.id == member.workflow_snapshot_id)
        .where(snapshot.run_id == run_id)
    ):
        members.setdefault(snapshot_id, []).append(node_id)
    return [
        RecordedWorkflowSnapshot(
            id=snapshot_id,
            created_at=created_at,
            path=path,
            member_ids=tuple(sorted(members.get(snapshot_id, []))),
        )
        for snapshot_id, created_at, path in headers
    ]


def _newest_in_campaign(session: Session, campaign_id: int) -> tuple[int, int] | None:
    found = session.execute(
        select(schema.WorkflowSnapshotRow.id, schema.RunRow.number)
        .join(schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id)
        .where(schema.RunRow.campaign_id == campaign_id)
        .order_by(schema.WorkflowSnapshotRow.id.desc())
        .limit(1)
    ).first()
    return None if found is None else (found[0], found[1])
