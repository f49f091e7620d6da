"""Core handles on the ORM's tables, for the registry's write path.

Registrations are written with Core statements on these tables (see
:func:`snapreg.database.run_in_connection`), and a batch's row ids are reserved in
advance with :func:`allocate_ids` so that every table takes one plain multi-row
insert.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import cast

from sqlalchemy import Connection, Table, insert, text
from sqlalchemy.sql.elements import TextClause

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
INSERT_NODE = insert(NODE)
INSERT_SUBMISSION = insert(SUBMISSION)
INSERT_WORKFLOW_SNAPSHOT = insert(WORKFLOW_SNAPSHOT)
INSERT_MEMBER = insert(MEMBER)


def allocate_ids(connection: Connection, table: Table, count: int) -> list[int]:
    """Reserve ``count`` new row ids of ``table``, ascending, in this transaction.

    With the ids known in advance a batch is one plain multi-row insert; asking
    the database for them with INSERT ... RETURNING in parameter order makes
    SQLAlchemy fall back to one statement per row on SQLite. SQLite: the writer
    holds the database's write lock from BEGIN IMMEDIATE, so max(id) + 1 onwards
    is free. PostgreSQL: the column's own sequence.
    """
    return allocate_many(connection, {table: count})[table]


def allocate_many(
    connection: Connection, counts: Mapping[Table, int]
) -> dict[Table, list[int]]:
    """:func:`allocate_ids` for several tables at once, in one statement."""
    wanted = tuple((table, count) for table, count in counts.items() if count > 0)
    allocated: dict[Table, list[int]] = {table: [] for table in counts}
    if not wanted:
        return allocated
    names = tuple(table.name for table, _ in wanted)
    if connection.dialect.name == "postgresql":
        rows = connection.execute(
            _sequence_statement(names),
            {f"count{index}": count for index, (_, count) in enumerate(wanted)},
        )
        for position, row_id in rows:
            allocated[wanted[position][0]].append(row_id)
        for ids in allocated.values():
            ids.sort()
        return allocated
    highest = connection.execute(_max_statement(names)).one()
    for (table, count), top in zip(wanted, highest, strict=True):
        start = (top or 0) + 1
        allocated[table] = list(range(start, start + count))
    return allocated


@lru_cache(maxsize=64)
def _sequence_statement(names: tuple[str, ...]) -> TextClause:
    """PostgreSQL: the next values of each table's id sequence, as many as asked."""
    return text(
        " UNION ALL ".join(
            f"SELECT {index} AS t, nextval(pg_get_serial_sequence('{name}', 'id'))"
            f" AS id FROM generate_series(1, :count{index})"
            for index, name in enumerate(names)
        )
    )


@lru_cache(maxsize=64)
def _max_statement(names: tuple[str, ...]) -> TextClause:
    """SQLite: each table's highest id (built once: it is on the hot path)."""
    return text(
        "SELECT " + ", ".join(f"(SELECT max(id) FROM {name})" for name in names)
    )


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
