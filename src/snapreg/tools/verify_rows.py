"""``snapreg verify``'s streams of rows, each ordered by the node it belongs to.

A run's nodes by id; its consistent pairs by ``higher_node_id``; its workflow
snapshots, with their members' node rows, by their newest member's id (0 for one
without members), then id. The database sorts; each stream is fetched
:data:`STREAM_CHUNK` rows at a time (server-side cursors on PostgreSQL), all on the
one connection of verify's read-only transaction, so that they are read side by
side with the nodes (:class:`Merge`) and memory holds a chunk of each, not the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import aliased

from snapreg.rules.graph import Policy
from snapreg.rules.topology import Topology
from snapreg.storage import schema
from snapreg.storage.codecs import NODE_METADATA_COLUMNS

_T = TypeVar("_T")

#: Rows fetched at a time from each stream.
STREAM_CHUNK = 1000
#: How every stream is executed.
STREAM_OPTIONS = {"yield_per": STREAM_CHUNK}

_node = schema.SnapshotNodeRow
_member = schema.WorkflowSnapshotMemberRow
_snapshot = schema.WorkflowSnapshotRow
_pair = schema.ConsistentPairRow
#: What is read of each node (the metadata columns keep their names, so that a
#: row is what :func:`~snapreg.storage.codecs.metadata_from_row` reads).
NODE_COLUMNS = (
    _node.id,
    _node.run_id,
    _node.instance,
    _node.num,
    _node.is_restart,
    _node.retired_at,
    _node.snapshot_file_size,
    *(getattr(_node, name) for name in NODE_METADATA_COLUMNS),
)


@dataclass(frozen=True)
class RunInfo:
    """A run as the replay needs it."""

    id: int
    number: int
    model_name: str
    topology: Topology
    policy: Policy


@dataclass
class StoredWorkflowSnapshot:
    """A workflow_snapshot row with its members' node rows.

    Attributes:
        members: One row per member row: ``member_id`` and the node's columns
            (``id`` is None when the node row is gone).
        newest: The highest member node id; 0 without members.
    """

    id: int
    path: str
    description: str
    newest: int
    members: list[Any]


class Merge(Generic[_T]):
    """A stream of rows ordered by a node id, taken node by node."""

    def __init__(self, rows: Iterator[_T], key: Callable[[_T], int]) -> None:
        self._rows = rows
        self._key = key
        self._next = next(rows, None)

    def take(self, node_id: int) -> tuple[list[_T], list[_T]]:
        """The rows keyed below ``node_id`` (passed by), and those keyed at it."""
        passed: list[_T] = []
        here: list[_T] = []
        while self._next is not None:
            key = self._key(self._next)
            if key > node_id:
                break
            (here if key == node_id else passed).append(self._next)
            self._next = next(self._rows, None)
        return passed, here

    def rest(self) -> Iterator[_T]:
        """The rows not taken yet."""
        while self._next is not None:
            row, self._next = self._next, next(self._rows, None)
            yield row


def _newest_members(run_id: int) -> Any:
    return (
        select(
            _member.workflow_snapshot_id.label("snapshot_id"),
            func.max(_member.snapshot_node_id).label("newest"),
        )
        .join(_snapshot, _snapshot.id == _member.workflow_snapshot_id)
        .where(_snapshot.run_id == run_id)
        .group_by(_member.workflow_snapshot_id)
        .subquery()
    )


def stored_workflow_snapshots(
    connection: Connection, run_id: int
) -> Iterator[StoredWorkflowSnapshot]:
    """A run's workflow snapshots by newest member, then id, with their members."""
    newest = _newest_members(run_id)
    key = func.coalesce(newest.c.newest, 0)
    headers: Select[Any] = (
        select(_snapshot.id, _snapshot.path, _snapshot.description, key.label("key"))
        .outerjoin(newest, newest.c.snapshot_id == _snapshot.id)
        .where(_snapshot.run_id == run_id)
        .order_by(key, _snapshot.id)
    )
    members: Select[Any] = (
        select(
            _member.workflow_snapshot_id,
            _member.snapshot_node_id.label("member_id"),
            *NODE_COLUMNS,
        )
        .join(newest, newest.c.snapshot_id == _member.workflow_snapshot_id)
        .outerjoin(_node, _node.id == _member.snapshot_node_id)
        .order_by(
            newest.c.newest, _member.workflow_snapshot_id, _member.snapshot_node_id
        )
    )
    member_rows = iter(connection.execute(members, execution_options=STREAM_OPTIONS))
    pending = next(member_rows, None)
    for header in connection.execute(headers, execution_options=STREAM_OPTIONS):
        found = []
        while pending is not None and pending.workflow_snapshot_id == header.id:
            found.append(pending)
            pending = next(member_rows, None)
        yield StoredWorkflowSnapshot(
            header.id, header.path, header.description, header.key, found
        )


def stored_pairs(connection: Connection, run_id: int) -> Iterator[Any]:
    """The consistent pairs whose higher_node_id is a node of the run, by it."""
    higher = aliased(_node)
    return iter(
        connection.execute(
            select(_pair.lower_node_id, _pair.higher_node_id)
            .join(higher, higher.id == _pair.higher_node_id)
            .where(higher.run_id == run_id)
            .order_by(_pair.higher_node_id, _pair.lower_node_id),
            execution_options=STREAM_OPTIONS,
        )
    )


def run_nodes(connection: Connection, run_id: int) -> Iterator[Any]:
    """A run's nodes, by id."""
    return iter(
        connection.execute(
            select(*NODE_COLUMNS).where(_node.run_id == run_id).order_by(_node.id),
            execution_options=STREAM_OPTIONS,
        )
    )


def node_row(connection: Connection, node_id: int) -> Any:
    """One node's row, if it exists."""
    return connection.execute(
        select(*NODE_COLUMNS).where(_node.id == node_id)
    ).one_or_none()
