"""Core handles on the ORM's tables, for the registry's write path.

Registrations are written with Core statements on these tables (see
:func:`snapreg.database.run_in_connection`), and a batch's row ids are reserved in
advance with :func:`allocate_ids` so that every table takes one plain multi-row
insert.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection, Table, func, insert, select, text

from snapreg import models
from snapreg.graph import GraphNode

RUN = cast(Table, models.Run.__table__)
SUBMISSION = cast(Table, models.Submission.__table__)
NODE = cast(Table, models.SnapshotNode.__table__)
EDGE = cast(Table, models.ConsistentPair.__table__)
WORKFLOW_SNAPSHOT = cast(Table, models.WorkflowSnapshot.__table__)
MEMBER = cast(Table, models.WorkflowSnapshotMember.__table__)
INSTANCE_PEER = cast(Table, models.InstancePeer.__table__)
INSTANCE_CONDUIT = cast(Table, models.InstanceConduit.__table__)
INSERT_EDGE = insert(EDGE)


def allocate_ids(connection: Connection, table: Table, count: int) -> list[int]:
    """Reserve ``count`` new row ids of ``table``, ascending, in this transaction.

    With the ids known in advance a batch is one plain multi-row insert; asking
    the database for them with INSERT ... RETURNING in parameter order makes
    SQLAlchemy fall back to one statement per row on SQLite. SQLite: the writer
    holds the database's write lock from BEGIN IMMEDIATE, so max(id) + 1 onwards
    is free. PostgreSQL: the column's own sequence.
    """
    if count == 0:
        return []
    if connection.dialect.name == "postgresql":
        rows = connection.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id'))"
                " FROM generate_series(1, :count)"
            ),
            {"table": table.name, "count": count},
        ).scalars()
        return sorted(rows)
    highest = connection.execute(select(func.max(table.c.id))).scalar() or 0
    return list(range(highest + 1, highest + 1 + count))


def edge_rows(node: GraphNode, peers: list[GraphNode]) -> list[dict[str, int]]:
    """consistent_pair rows for a node's edges, each stored once, lower id first."""
    return [
        {
            "lower_node_id": min(node.id, peer.id),
            "higher_node_id": max(node.id, peer.id),
        }
        for peer in peers
        if peer is not node
    ]
