"""Read-only queries that turn rows into the objects snapreg hands out.

Every function takes an open session and issues a constant number of statements,
whatever the number of rows: listing N workflow snapshots with all their members is
two queries, not N + 1. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, aliased

from snapreg.errors import NotFoundError
from snapreg.rules.snapshot import Reference, SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import Topology
from snapreg.storage import schema
from snapreg.storage.codecs import metadata_from_row


@lru_cache(maxsize=65536)
def reference(instance: str) -> Reference:
    """The yMMSL Reference of an instance name (cached: parsing is not free)."""
    return Reference(instance)


def public_node(
    row: Any, topology: Topology | None, run_number: int | None
) -> SnapshotNode:
    """A :class:`SnapshotNode` for a snapshot_node row, without its edges."""
    peers = (
        frozenset(reference(peer) for peer in topology.peers(row.instance))
        if topology is not None and row.instance in topology.instance_set
        else frozenset()
    )
    return SnapshotNode(
        num=row.num,
        instance=reference(row.instance),
        snapshot=metadata_from_row(row),
        peers=peers,
        id=row.id,
        is_restart=row.is_restart,
        run=run_number,
        registered_at=row.registered_at,
        retired_at=row.retired_at,
    )


def nodes_with_edges(
    session: Session,
    run_id: int,
    instance: str,
    topology: Topology,
    run_number: int,
    *,
    active_only: bool,
) -> list[SnapshotNode]:
    """An instance's nodes with their consistent peers filled in (three queries).

    With ``active_only``, only active nodes and edges between active nodes.
    """
    node = schema.SnapshotNodeRow
    conditions = [node.run_id == run_id, node.instance == instance]
    if active_only:
        conditions.append(node.retired_at.is_(None))
    rows = session.scalars(select(node).where(*conditions).order_by(node.num)).all()
    nodes = {row.id: public_node(row, topology, run_number) for row in rows}
    if not nodes:
        return []
    pair = schema.ConsistentPairRow
    own_ids = select(node.id).where(*conditions).scalar_subquery()
    edge_rows = session.execute(
        select(pair.lower_node_id, pair.higher_node_id).where(
            or_(pair.lower_node_id.in_(own_ids), pair.higher_node_id.in_(own_ids))
        )
    ).all()
    peer_ids = {
        other
        for lower, higher in edge_rows
        for other in (lower, higher)
        if other not in nodes
    }
    peers: dict[int, SnapshotNode] = {}
    if peer_ids:
        peer_query = select(node).where(node.id.in_(peer_ids))
        if active_only:
            peer_query = peer_query.where(node.retired_at.is_(None))
        for row in session.scalars(peer_query):
            peers[row.id] = public_node(row, topology, run_number)
    everything = {**peers, **nodes}
    for lower, higher in edge_rows:
        first, second = everything.get(lower), everything.get(higher)
        if first is None or second is None:
            continue
        first.consistent_peers.setdefault(second.instance, []).append(second)
        if first is not second:
            second.consistent_peers.setdefault(first.instance, []).append(first)
    for snapshot_node in everything.values():
        for linked in snapshot_node.consistent_peers.values():
            linked.sort(key=lambda linked_node: linked_node.num)
    return list(nodes.values())


def workflow_snapshots(
    session: Session,
    campaign_id: int,
    campaign_name: str,
    topology: Topology | None = None,
    *,
    ids: Sequence[int] | None = None,
) -> list[WorkflowSnapshot]:
    """A campaign's workflow snapshots, oldest first, with their members (2 queries)."""
    snapshot = schema.WorkflowSnapshotRow
    run = schema.RunRow
    query = (
        select(snapshot, run.number)
        .join(run, run.id == snapshot.run_id)
        .where(run.campaign_id == campaign_id)
        .order_by(snapshot.id)
    )
    if ids is not None:
        query = query.where(snapshot.id.in_(ids))
    headers = session.execute(query).all()
    if not headers:
        return []
    member = schema.WorkflowSnapshotMemberRow
    node = schema.SnapshotNodeRow
    member_query = (
        select(member.workflow_snapshot_id, node)
        .join(node, node.id == member.snapshot_node_id)
        .join(snapshot, snapshot.id == member.workflow_snapshot_id)
        .join(run, run.id == snapshot.run_id)
        .where(run.campaign_id == campaign_id)
    )
    if ids is not None:
        member_query = member_query.where(member.workflow_snapshot_id.in_(ids))
    run_numbers = {header[0].id: header[1] for header in headers}
    members: dict[int, list[SnapshotNode]] = {}
    made: dict[int, SnapshotNode] = {}
    for snapshot_id, node_row in session.execute(member_query):
        public = made.get(node_row.id)
        if public is None:
            public = public_node(node_row, topology, run_numbers.get(snapshot_id))
            made[node_row.id] = public
        members.setdefault(snapshot_id, []).append(public)
    return [
        WorkflowSnapshot(
            id=header.id,
            campaign=campaign_name,
            run=number,
            nodes=tuple(sorted(members.get(header.id, []), key=lambda n: n.instance)),
            path=Path(header.path),
            created_at=header.created_at,
            description=header.description,
        )
        for header, number in headers
    ]


def campaign_row(session: Session, name: str) -> schema.CampaignRow:
    """The campaign called ``name``.

    Raises:
        NotFoundError: listing the campaigns there are.
    """
    found = session.scalars(
        select(schema.CampaignRow).where(schema.CampaignRow.name == name)
    ).one_or_none()
    if found is None:
        known = session.scalars(select(schema.CampaignRow.name).order_by("name")).all()
        raise NotFoundError(
            f"no campaign {name!r} in this database"
            + (f" (campaigns: {', '.join(known)})" if known else " (it has none)")
        )
    return found


def latest_run(session: Session, campaign_id: int) -> schema.RunRow | None:
    """The campaign's newest run, if any."""
    return session.scalars(
        select(schema.RunRow)
        .where(schema.RunRow.campaign_id == campaign_id)
        .order_by(schema.RunRow.number.desc())
        .limit(1)
    ).one_or_none()


def active_graph_rows(
    session: Session, run_id: int
) -> tuple[Sequence[schema.SnapshotNodeRow], list[tuple[int, int]]]:
    """The active nodes of a run and the edges between them."""
    node = schema.SnapshotNodeRow
    nodes = session.scalars(
        select(node).where(node.run_id == run_id, node.retired_at.is_(None))
    ).all()
    return nodes, run_edges(session, run_id, active_only=True)


def run_edges(
    session: Session, run_id: int, *, active_only: bool
) -> list[tuple[int, int]]:
    """A run's consistent pairs as (lower id, higher id), in that order.

    With ``active_only``, only the pairs whose two nodes are both active.
    """
    lower = aliased(schema.SnapshotNodeRow)
    higher = aliased(schema.SnapshotNodeRow)
    pair = schema.ConsistentPairRow
    conditions = [lower.run_id == run_id]
    if active_only:
        conditions += [lower.retired_at.is_(None), higher.retired_at.is_(None)]
    rows = session.execute(
        select(pair.lower_node_id, pair.higher_node_id)
        .join(lower, lower.id == pair.lower_node_id)
        .join(higher, higher.id == pair.higher_node_id)
        .where(and_(*conditions))
        .order_by(pair.lower_node_id, pair.higher_node_id)
    ).all()
    return [(lower_id, higher_id) for lower_id, higher_id in rows]


def pending_submissions(
    session: Session, run_id: int
) -> Sequence[schema.SubmissionRow]:
    """Acknowledged submissions of a run that have no node yet, in order."""
    submission = schema.SubmissionRow
    node = schema.SnapshotNodeRow
    processed = select(node.id).where(node.submission_id == submission.id).exists()
    return session.scalars(
        select(submission)
        .where(submission.run_id == run_id, ~processed)
        .order_by(submission.id)
    ).all()


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Split a long IN list: SQLite limits the number of bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
