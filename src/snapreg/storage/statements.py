"""Core handles on the ORM's tables, for the registry's write path.

Registrations are written with Core statements on these tables (see
:func:`snapreg.storage.transactions.run_in_connection`), and a batch's row ids are
reserved in advance with :func:`allocate_ids` so that every table takes one plain
multi-row insert.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, text, update
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert, Update

from snapreg.errors import WriterConflictError
from snapreg.rules.graph import GraphNode
from snapreg.storage import schema
from snapreg.storage.codecs import NODE_METADATA_COLUMNS
from snapreg.storage.sending import fetch, send, send_many

RUN = cast(Table, schema.RunRow.__table__)
SUBMISSION = cast(Table, schema.SubmissionRow.__table__)
NODE = cast(Table, schema.SnapshotNodeRow.__table__)
EDGE = cast(Table, schema.ConsistentPairRow.__table__)
WORKFLOW_SNAPSHOT = cast(Table, schema.WorkflowSnapshotRow.__table__)
MEMBER = cast(Table, schema.WorkflowSnapshotMemberRow.__table__)
INSTANCE_PEER = cast(Table, schema.InstancePeerRow.__table__)
INSTANCE_CONDUIT = cast(Table, schema.InstanceConduitRow.__table__)
INSERT_EDGE = insert(EDGE)


@dataclass(frozen=True)
class RunWriter:
    """The writer lease a transaction writes under: checked as ids are reserved.

    Attributes:
        run_id: The run's row id.
        token: The writer's token; the run's lease must still hold it.
        description: The run, for the error (``run 3 of campaign 'x'``).
    """

    run_id: int
    token: str
    description: str


def allocate_ids(
    connection: Connection, table: Table, count: int, *, writer: RunWriter | None = None
) -> list[int]:
    """Reserve ``count`` new row ids of ``table``, ascending, in this transaction.

    With the ids known in advance a batch is one plain multi-row insert; asking
    the database for them with INSERT ... RETURNING in parameter order makes
    SQLAlchemy fall back to one statement per row on SQLite. SQLite: the writer
    holds the database's write lock from BEGIN IMMEDIATE, so max(id) + 1 onwards
    is free. PostgreSQL: the column's own sequence.

    Args:
        connection: The transaction's connection.
        table: Whose ids.
        count: How many.
        writer: Also check, in the same statement, that the run is still this
            writer's (see :func:`allocate_many`).
    """
    return allocate_many(connection, {table: count}, writer=writer)[table]


def allocate_many(
    connection: Connection,
    counts: Mapping[Table, int],
    *,
    writer: RunWriter | None = None,
) -> dict[Table, list[int]]:
    """:func:`allocate_ids` for several tables at once, in one statement.

    With ``writer``, the same statement reads whether the run's lease still
    holds the writer's token: a transaction's first statement, so a registry
    whose run was taken over stops before it writes anything, at no extra
    round trip. Nothing can change the lease between this read and the commit:
    on SQLite the transaction holds the write lock; on PostgreSQL the writer's
    session holds the run's advisory lock (see :mod:`snapreg.runs`).

    Raises:
        WriterConflictError: the run's lease no longer holds ``writer.token``.
    """
    wanted = tuple((table, count) for table, count in counts.items() if count > 0)
    allocated: dict[Table, list[int]] = {table: [] for table in counts}
    if not wanted and writer is None:
        return allocated
    names = tuple(table.name for table, _ in wanted)
    owned = True
    if connection.dialect.name == "postgresql":
        parameters: dict[str, Any] = {
            f"count{index}": count for index, (_, count) in enumerate(wanted)
        }
        if writer is not None:
            parameters.update(run_id=writer.run_id, token=writer.token)
        sql, order = _sequence_statement(connection.dialect, names, writer is not None)
        rows = fetch(
            connection,
            sql,
            parameters if order is None else tuple(parameters[key] for key in order),
        )
        for position, value in rows:
            if position == _LEASE_ROW:
                owned = value == 1
            else:
                allocated[wanted[position][0]].append(value)
        for ids in allocated.values():
            ids.sort()
    else:
        (highest,) = fetch(
            connection,
            _max_statement(names, writer is not None),
            () if writer is None else (writer.run_id, writer.token),
        )
        if writer is not None:
            owned = highest[-1] == 1
            highest = highest[:-1]
        for (table, count), top in zip(wanted, highest, strict=True):
            start = (top or 0) + 1
            allocated[table] = list(range(start, start + count))
    if writer is not None and not owned:
        raise WriterConflictError(
            f"{writer.description} was taken over by another registry; this one"
            " stops writing"
        )
    return allocated


def plan_statements_once(connection: Connection) -> None:
    """PostgreSQL: give each statement the session prepares one generic plan.

    psycopg prepares a statement the sixth time a session runs it. The server
    then plans it anew at each execution for as long as a plan for the
    parameters at hand looks cheaper than one for any parameters, and for the
    ids' statement it always does: ``generate_series(1, $n)`` is estimated at
    1,000 rows without its parameter and at a handful with it. That planning
    cost about 50 µs of a 1 ms registration. The registry's statements find
    their rows by primary key, draw from sequences or insert arrays of rows, so
    one plan serves every parameter. Called on the writer's own session (see
    :class:`~snapreg.storage.transactions.HeldConnection`), whose prepared
    statements are the registration path's, and which is closed, not pooled,
    when it ends. Nothing to do on SQLite, which plans a statement once anyway.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")


# the row of the sequence statement that holds the lease check
_LEASE_ROW = -1


@lru_cache(maxsize=64)
def _sequence_statement(
    dialect: Dialect, names: tuple[str, ...], check_writer: bool
) -> tuple[str, tuple[str, ...] | None]:
    """PostgreSQL: the next values of each table's id sequence, as many as asked.

    Returns:
        The driver's SQL, and the order of its parameters if they are positional
        (None: they are named).
    """
    parts = [
        f"SELECT {index} AS t, nextval(pg_get_serial_sequence('{name}', 'id'))"
        f" AS id FROM generate_series(1, :count{index})"
        for index, name in enumerate(names)
    ]
    if check_writer:
        parts.append(
            f"SELECT {_LEASE_ROW} AS t, count(*) AS id FROM run"
            " WHERE id = :run_id AND writer_token = :token"
        )
    compiled = text(" UNION ALL ".join(parts)).compile(dialect=dialect)
    order = tuple(compiled.positiontup or ()) if compiled.positional else None
    return compiled.string, order


@lru_cache(maxsize=64)
def _max_statement(names: tuple[str, ...], check_writer: bool) -> str:
    """SQLite: each table's highest id (built once: it is on the hot path)."""
    columns = [f"(SELECT max(id) FROM {name})" for name in names]
    if check_writer:
        columns.append("(SELECT count(*) FROM run WHERE id = ? AND writer_token = ?)")
    return "SELECT " + ", ".join(columns)


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


_UNSET = object()

# compiled SQL; a row's converted values as the driver takes them (a tuple in
# the SQL's positional order, or a dict of named parameters); (position, bind
# processor) of each value that has one; values in a row; whether named
_Prepared = tuple[
    str,
    Callable[[list[Any]], Any],
    tuple[tuple[int, Callable[[Any], Any]], ...],
    int,
    bool,
]


class FastStatement:
    """A statement executed many times, compiled once per dialect.

    ``Connection.execute(statement, rows)`` pays, per call, a cache lookup and,
    per row, a walk through a dictionary of parameters; on the registration path
    that was a large share of the time. Here the statement is compiled once and
    sent with :func:`send`, each value converted by its parameter's own bind
    processor, so what is stored is exactly what SQLAlchemy would store; the
    engine's events still see every statement.

    On PostgreSQL an INSERT of several rows is one statement that unnests one
    array per column: psycopg sends an executemany as one statement per row, and
    encoding, sending and reading back a result for each row was the largest
    share of a PostgreSQL registration's CPU. Its text does not depend on the
    number of rows, so psycopg converts it once and the server keeps it
    prepared; a VALUES list of every row was a new statement each time, parsed
    by psycopg (which caches no statement of over 50 parameters) and planned by
    the server.
    """

    def __init__(
        self,
        statement: Insert | Update,
        names: Sequence[str],
        *,
        insert_columns: bool = False,
    ) -> None:
        """Prepare a statement; nothing is compiled before its first use.

        Args:
            statement: The statement, its parameters named.
            names: The parameters, in the order each row gives their values.
            insert_columns: ``statement`` is a bare INSERT whose columns are
                ``names``.
        """
        self.statement = statement
        self.names = tuple(names)
        self._insert_columns = insert_columns
        self._prepared: dict[str, _Prepared] = {}
        # PostgreSQL: the INSERT of arrays, and the parameters in its order
        self._array_inserts: dict[str, tuple[str, tuple[str, ...]]] = {}

    def execute(self, connection: Connection, rows: Iterable[Sequence[Any]]) -> None:
        """Execute once per row (one executemany); each row in ``names`` order."""
        dialect = connection.dialect
        prepared = self._prepared.get(dialect.name)
        if prepared is None:
            prepared = self._prepared[dialect.name] = self._prepare(dialect)
        sql, shape, converting, width, named = prepared
        converted: list[Any] = []
        # rows of one call often share a value (the time of the batch, its run):
        # a value identical to the previous row's is converted once
        last_in: list[Any] = [_UNSET] * width
        last_out: list[Any] = [None] * width
        for row in rows:
            if len(row) != width:
                raise ValueError(f"{len(row)} values for {width} parameters")
            values = list(row)
            for index, process in converting:
                value = values[index]
                if value is last_in[index]:
                    values[index] = last_out[index]
                else:
                    last_in[index] = value
                    values[index] = last_out[index] = process(value)
            converted.append(shape(values))
        if not converted:
            return
        if len(converted) == 1:
            send(connection, sql, converted[0])
        elif named and self._insert_columns:
            self._insert_arrays(connection, sql, converted)
        else:
            send_many(connection, sql, converted)

    def _insert_arrays(
        self, connection: Connection, sql: str, rows: list[dict[str, Any]]
    ) -> None:
        """PostgreSQL: the rows of an INSERT as one array per column, unnested."""
        prepared = self._array_inserts.get(sql)
        if prepared is None:
            prepared = self._array_inserts[sql] = _array_insert(
                sql, cast(Table, self.statement.table), connection.dialect
            )
        statement, order = prepared
        send(connection, statement, tuple([row[key] for row in rows] for key in order))

    def _prepare(self, dialect: Dialect) -> _Prepared:
        compiled = self.statement.compile(
            dialect=dialect,
            column_keys=list(self.names) if self._insert_columns else None,
        )
        binds = [compiled.binds[name] for name in self.names]
        processors = [
            bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds
        ]
        converting = tuple(
            (index, process)
            for index, process in enumerate(processors)
            if process is not None
        )
        width = len(processors)
        shape: Callable[[list[Any]], Any]
        if not compiled.positional:
            keys = tuple(bind.key for bind in binds)
            shape = lambda values: dict(zip(keys, values, strict=True))  # noqa: E731
            return compiled.string, shape, converting, width, True
        positions = compiled.positiontup or []
        getter = itemgetter(*(self.names.index(name) for name in positions))
        # itemgetter of several indexes gives a tuple, of one index the value
        shape = getter if len(positions) > 1 else lambda values: (getter(values),)
        return compiled.string, shape, converting, width, False


_NAMED_PARAMETER = re.compile(r"%\((\w+)\)s")


def _array_insert(
    sql: str, table: Table, dialect: Dialect
) -> tuple[str, tuple[str, ...]]:
    """PostgreSQL: an INSERT of one array per column, and the parameters' order.

    ``sql`` is SQLAlchemy's compiled single-row INSERT of ``table``; its column
    list is kept, and its VALUES row becomes the rows of ``unnest`` over one
    array per column, each cast to the column's own type (an array of NULLs has
    no type of its own).
    """
    head, separator, values = sql.partition(" VALUES ")
    order = tuple(_NAMED_PARAMETER.findall(values))
    assert separator and len(order) == len(set(order)), sql
    arrays = ", ".join(
        f"%b::{table.c[key].type.compile(dialect=dialect)}[]" for key in order
    )
    return f"{head} SELECT * FROM unnest({arrays})", order


def fast_insert(table: Table, columns: Sequence[str]) -> FastStatement:
    """A :class:`FastStatement` inserting rows of these columns into the table."""
    return FastStatement(insert(table), columns, insert_columns=True)


FAST_SUBMISSION = fast_insert(
    SUBMISSION, ("id", "run_id", "instance", "snapshot_metadata", "submitted_at")
)
FAST_NODE = fast_insert(
    NODE,
    ("id", "run_id", "instance", "num", "is_restart", "submission_id", "registered_at")
    + NODE_METADATA_COLUMNS
    + ("snapshot_file_size",),
)
FAST_EDGE = fast_insert(EDGE, ("lower_node_id", "higher_node_id"))
FAST_WORKFLOW_SNAPSHOT = fast_insert(
    WORKFLOW_SNAPSHOT, ("id", "run_id", "path", "description", "created_at")
)
FAST_MEMBER = fast_insert(MEMBER, ("workflow_snapshot_id", "snapshot_node_id"))
# one row per node: (node id, retirement time)
FAST_RETIRE = FastStatement(
    update(NODE)
    .where(NODE.c.id == bindparam("node_id", type_=NODE.c.id.type))
    .values(retired_at=bindparam("now", type_=NODE.c.retired_at.type)),
    ("node_id", "now"),
)
