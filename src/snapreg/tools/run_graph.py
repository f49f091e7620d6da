"""One run's snapshot graph as recorded, read in a few queries, for looking at it.

``snapreg explain`` and ``snapreg plot`` look at the same thing: the nodes of one
run of a campaign, the consistent pairs between them and the workflow snapshots
found from them, together with the run's topology. :func:`load_run_graph` reads
exactly that, read-only, in one transaction, with a constant number of queries
whatever the size of the run, into plain objects that outlive the session
(:func:`read_run_graph` does the same in a session the caller holds).

A run resumed from a workflow snapshot starts with copies: each resumed instance
first registers again the snapshot it resumed from, with that snapshot's own
metadata, so its wallclock time is the *earlier* run's clock. The graph names
those copies (:attr:`RunGraph.resumed_copies`) so that a timeline can place them
at the run's start instead of after the run's later snapshots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from snapreg.errors import NotFoundError
from snapreg.rules.topology import Topology
from snapreg.storage import queries, schema
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools.reader import campaign_name, topology_from_signature

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000


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
        resumed_copies: The loaded nodes that are a resumed instance's copy of the
            snapshot it resumed from, by id: the number of the run it was
            resumed from. Such a node carries that run's wallclock time.
        total_nodes: How many nodes the run has when only its newest were loaded
            (``newest``); otherwise how many were loaded.
    """

    campaign: str
    run: int
    runs: int
    topology: Topology
    nodes: dict[int, RecordedNode]
    edges: list[tuple[int, int]]
    workflow_snapshots: list[RecordedWorkflowSnapshot]
    newest_in_campaign: tuple[int, int] | None
    resumed_copies: dict[int, int] = field(default_factory=dict)
    total_nodes: int = 0
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
    newest: int | None = None,
) -> RunGraph:
    """Read one run's snapshot graph; never change the database.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the only one there is.
        run: The run's number; default: the campaign's newest run.
        active_only: Load only active nodes and the pairs between them (what the
            registry still compares), instead of the whole history of the run.
        newest: Load at most this many of the run's newest nodes (by
            registration), besides its active ones: enough to draw a run with a
            million retired nodes. None loads them all.

    Raises:
        NotFoundError: no such database, campaign or run, or a campaign without
            runs.
        SchemaVersionError: the schema does not match this snapreg.
        StorageUnavailableError: the database cannot be read.
    """
    with ReadOnlyStore(database_url, check_schema=True) as store:
        return store.read(
            lambda session: read_run_graph(
                session,
                campaign_name(session, campaign, store.location),
                run=run,
                active_only=active_only,
                newest=newest,
            )
        )


def read_run_graph(
    session: Session,
    campaign: str,
    *,
    run: int | None = None,
    active_only: bool = False,
    newest: int | None = None,
) -> RunGraph:
    """:func:`load_run_graph` in a reading session the caller holds.

    Raises:
        NotFoundError: no such campaign or run, or a campaign without runs.
    """
    campaign_row = queries.campaign_row(session, campaign)
    runs = session.scalars(
        select(schema.RunRow)
        .where(schema.RunRow.campaign_id == campaign_row.id)
        .order_by(schema.RunRow.number)
    ).all()
    if not runs:
        raise NotFoundError(f"campaign {campaign!r} has no runs yet")
    if run is None:
        run_row = runs[-1]
    else:
        matching = [row for row in runs if row.number == run]
        if not matching:
            raise NotFoundError(
                f"campaign {campaign!r} has no run {run} (runs: 1 to {runs[-1].number})"
            )
        run_row = matching[0]
    node = schema.SnapshotNodeRow
    node_query = select(node).where(node.run_id == run_row.id).order_by(node.id)
    if active_only:
        node_query = node_query.where(node.retired_at.is_(None))
    if newest is None or active_only:
        nodes = {row.id: _recorded(row) for row in session.scalars(node_query)}
        edges = queries.run_edges(session, run_row.id, active_only=active_only)
        total = len(nodes)
    else:
        nodes = _newest_nodes(session, run_row.id, newest)
        edges = _edges_between(session, nodes)
        total = session.scalar(
            select(func.count()).select_from(node).where(node.run_id == run_row.id)
        ) or len(nodes)
    return RunGraph(
        campaign=campaign,
        run=run_row.number,
        runs=len(runs),
        topology=topology_from_signature(run_row.topology),
        nodes=nodes,
        edges=edges,
        workflow_snapshots=_workflow_snapshots(session, run_row.id),
        newest_in_campaign=_newest_in_campaign(session, campaign_row.id),
        resumed_copies=_resumed_copies(session, campaign_row.id, run_row, nodes),
        total_nodes=total,
    )


def _newest_nodes(
    session: Session, run_id: int, newest: int
) -> dict[int, RecordedNode]:
    """The run's newest ``newest`` nodes and its active ones, by id."""
    node = schema.SnapshotNodeRow
    # Walk the rows down from the newest (by primary key) instead of through an
    # index on run_id, which would sort all of a big run's rows first: run_id + 0
    # is not a column, so no index on it is used.
    recent = session.scalars(
        select(node)
        .where(node.run_id + 0 == run_id)
        .order_by(node.id.desc())
        .limit(max(newest, 0))
    ).all()
    active = session.scalars(
        select(node).where(node.run_id == run_id, node.retired_at.is_(None))
    ).all()
    rows = {row.id: row for row in [*recent, *active]}
    return {node_id: _recorded(rows[node_id]) for node_id in sorted(rows)}


def _edges_between(
    session: Session, nodes: dict[int, RecordedNode]
) -> list[tuple[int, int]]:
    """The consistent pairs whose two nodes are both among ``nodes``."""
    pair = schema.ConsistentPairRow
    found: list[tuple[int, int]] = []
    for chunk in queries.chunks(sorted(nodes), _IN_LIST_CHUNK):
        found.extend(
            (lower, higher)
            for lower, higher in session.execute(
                select(pair.lower_node_id, pair.higher_node_id).where(
                    pair.lower_node_id.in_(chunk)
                )
            )
            if higher in nodes
        )
    found.sort()
    return found


def _resumed_copies(
    session: Session,
    campaign_id: int,
    run_row: schema.RunRow,
    nodes: dict[int, RecordedNode],
) -> dict[int, int]:
    """Which loaded nodes re-send a snapshot of an earlier run, and of which run.

    A resumed instance stores the snapshot it resumed from again, as its first
    snapshot of the run (num 2, after its restart node), and registers it with
    that snapshot's metadata: the same wallclock time and message counts, and
    either the same file or, as libmuscle does, a copy in the new run directory.
    So a run's first node of an instance is a copy when it names the file of, or
    carries the wallclock time and message counts of, that instance's member of
    the workflow snapshot the run resumed from; for a run that recorded no
    lineage, of a node of the instance in an earlier run (the newest such run).
    """
    first = {
        node.instance: node
        for node in nodes.values()
        if node.num == 2 and not node.is_restart
    }
    if not first or run_row.number == 1:
        return {}
    node = schema.SnapshotNodeRow
    run = schema.RunRow
    columns = (
        node.instance,
        node.snapshot_filename,
        node.wallclock_time,
        node.port_message_counts,
        run.number,
    )
    resumed_from = run_row.resumed_from_workflow_snapshot_id
    if resumed_from is not None:
        member = schema.WorkflowSnapshotMemberRow
        snapshot = schema.WorkflowSnapshotRow
        originals = session.execute(
            select(*columns)
            .join(member, member.snapshot_node_id == node.id)
            .join(snapshot, snapshot.id == member.workflow_snapshot_id)
            .join(run, run.id == snapshot.run_id)
            .where(
                member.workflow_snapshot_id == resumed_from,
                node.is_restart.is_(False),
                node.instance.in_(list(first)),
            )
        ).all()
    else:
        earlier = select(run.id).where(
            run.campaign_id == campaign_id, run.number < run_row.number
        )
        originals = session.execute(
            select(*columns)
            .join(run, run.id == node.run_id)
            .where(
                node.run_id.in_(earlier),
                node.instance.in_(list(first)),
                node.is_restart.is_(False),
                or_(
                    node.snapshot_filename.in_(
                        [copy.snapshot_filename for copy in first.values()]
                    ),
                    node.wallclock_time.in_(
                        [copy.wallclock_time for copy in first.values()]
                    ),
                ),
            )
            .order_by(run.number)
        ).all()
    found: dict[int, int] = {}
    for instance, filename, wallclock_time, counts, number in originals:
        copy = first[instance]
        same_file = bool(filename) and filename == copy.snapshot_filename
        same_metadata = (
            wallclock_time == copy.wallclock_time and counts == copy.port_message_counts
        )
        if same_file or same_metadata:
            found[copy.id] = number  # ordered by run: the newest one stays
    return found


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
