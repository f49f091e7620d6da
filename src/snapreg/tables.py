"""Core handles on the ORM's tables, for the registry's write path.

Registrations are written with Core statements on these tables (see
:func:`snapreg.database.run_in_connection`), and a batch's row ids are reserved in
advance with :func:`allocate_ids` so that every table takes one plain multi-row
insert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, text, update
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import TextClause

from snapreg import models
from snapreg.graph import GraphNode
from snapreg.queries import NODE_METADATA_COLUMNS

RUN = cast(Table, models.Run.__table__)
SUBMISSION = cast(Table, models.Submission.__table__)
NODE = cast(Table, models.SnapshotNode.__table__)
EDGE = cast(Table, models.ConsistentPair.__table__)
WORKFLOW_SNAPSHOT = cast(Table, models.WorkflowSnapshot.__table__)
MEMBER = cast(Table, models.WorkflowSnapshotMember.__table__)
INSTANCE_PEER = cast(Table, models.InstancePeer.__table__)
INSTANCE_CONDUIT = cast(Table, models.InstanceConduit.__table__)
INSERT_EDGE = insert(EDGE)
INSERT_WORKFLOW_SNAPSHOT = insert(WORKFLOW_SNAPSHOT)
# Built once: a statement built per call pays for its cache key each time, and
# that of a literal datetime in .values() is surprisingly dear.
RETIRE_NODES = (
    update(NODE)
    .where(NODE.c.id.in_(bindparam("ids", expanding=True)))
    .values(retired_at=bindparam("now"))
)


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


# compiled SQL, positional order, bind processors, parameter names (if named)
_Prepared = tuple[
    str,
    tuple[int, ...],
    tuple[Callable[[Any], Any] | None, ...],
    tuple[str, ...] | None,
]


class FastInsert:
    """A multi-row INSERT of fixed columns, compiled once per dialect.

    ``Connection.execute(insert(table), rows)`` pays, per statement, a cache lookup
    and, per row, a walk through a dictionary of parameters; on the registration
    path that was a large share of the time. Here the statement is compiled once
    and sent with ``exec_driver_sql``, each value converted by its column's own
    bind processor, so the rows stored are exactly those SQLAlchemy would store;
    the engine's events still see the statement.
    """

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self._prepared: dict[str, _Prepared] = {}

    def execute(self, connection: Connection, rows: Iterable[Sequence[Any]]) -> None:
        """Insert rows, each a sequence of values in the order of ``columns``."""
        dialect = connection.dialect
        prepared = self._prepared.get(dialect.name)
        if prepared is None:
            prepared = self._prepared[dialect.name] = self._prepare(dialect)
        sql, order, processors, names = prepared
        converted: list[Any] = []
        for row in rows:
            values = [
                value if process is None else process(value)
                for value, process in zip(row, processors, strict=True)
            ]
            if names is None:
                converted.append(tuple(values[index] for index in order))
            else:
                converted.append(dict(zip(names, values, strict=True)))
        if converted:
            connection.exec_driver_sql(sql, converted)

    def _prepare(self, dialect: Dialect) -> _Prepared:
        compiled = insert(self.table).compile(
            dialect=dialect, column_keys=list(self.columns)
        )
        processors = tuple(
            self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self.columns
        )
        if compiled.positional:
            positions = compiled.positiontup or []
            order = tuple(self.columns.index(name) for name in positions)
            return compiled.string, order, processors, None
        names = tuple(compiled.binds[name].key for name in self.columns)
        return compiled.string, (), processors, names


FAST_SUBMISSION = FastInsert(
    SUBMISSION, ("id", "run_id", "instance", "snapshot_metadata", "submitted_at")
)
FAST_NODE = FastInsert(
    NODE,
    ("id", "run_id", "instance", "num", "is_restart", "submission_id", "registered_at")
    + NODE_METADATA_COLUMNS,
)
FAST_EDGE = FastInsert(EDGE, ("lower_node_id", "higher_node_id"))
FAST_MEMBER = FastInsert(MEMBER, ("workflow_snapshot_id", "snapshot_node_id"))
