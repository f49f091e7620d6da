"""Registrations into rows: the in-memory graph, batch planning and the SQL writes.

A batch of registrations is worked out in memory first (new nodes, edges, the
workflow snapshots they complete, the nodes those retire), then written with one
statement per table, so a batch costs a handful of round trips and one commit. The
workflow snapshot files are written after the commit; the file writer hears of
them before it (so that they count as unwritten from the moment their rows can be
seen), and the registry's listener, if any, once they are written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Connection, Table
from sqlalchemy.orm import Session

from snapreg.registry.files import FileWriter, NameAllocator, snapshot_file_size
from snapreg.registry.group_commit import Staged
from snapreg.registry.store import RunStore
from snapreg.rules.graph import ActiveGraph, GraphNode, Policy
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.topology import Topology
from snapreg.rules.workflow_file import Member, describe, resume_mapping
from snapreg.storage import codecs, queries, sending, statements
from snapreg.storage.transactions import run_transaction

_logger = logging.getLogger(__name__)

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000

#: One registration to process: (instance, metadata, submission). The submission
#: is its row id if already committed, its staged form if its row commits with
#: the batch, None for ``add_snapshot``.
Registration = tuple[str, SnapshotMetadata, int | Staged | None]


@dataclass
class Found:
    """A workflow snapshot found by one registration, before and after commit."""

    nodes: list[GraphNode]
    path: Path | None
    description: str
    resume: dict[str, str]
    id: int = 0


@dataclass
class Batch:
    """The rows a batch of registrations will write, gathered before writing."""

    nodes: list[tuple[GraphNode, int | Staged | None]] = field(default_factory=list)
    #: each node's snapshot file size, as the manager saw it at registration
    file_sizes: list[int | None] = field(default_factory=list)
    #: registrations whose submission rows commit with the batch
    staged: list[Staged] = field(default_factory=list)
    edges: list[tuple[GraphNode, GraphNode]] = field(default_factory=list)
    workflow_snapshots: list[Found] = field(default_factory=list)
    retired: list[GraphNode] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    """What one processed registration produced, applied to memory after commit."""

    node: GraphNode
    found: list[Found] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class BatchWriter:
    """Processes registrations of one run: graph in memory, rows in the database.

    Called with the store's lock held. If a transaction fails, the in-memory graph
    is reloaded from the database, where nothing of the batch exists.
    """

    def __init__(
        self,
        store: RunStore,
        topology: Topology,
        policy: Policy,
        files: FileWriter,
        folder: Path | None,
        on_workflow_snapshots: Callable[[], None] | None = None,
    ) -> None:
        """Args:
        store: The run's database.
        topology: The model.
        policy: Which workflow snapshots to find.
        files: Writes the workflow snapshot files.
        folder: Where they go; None writes none.
        on_workflow_snapshots: Called after each commit that added workflow
            snapshots, once their files are written (or wait to be), in the
            registering thread with the store's lock held: it must return at
            once. What it raises is logged, never the registration's.
        """
        self._store = store
        self._run = store.opened()
        self._topology = topology
        self._policy: Policy = policy
        self._files = files
        self._on_workflow_snapshots = on_workflow_snapshots
        self._allocator = NameAllocator(folder) if folder is not None else None
        self.graph = ActiveGraph(topology)
        # True while the in-memory graph may hold rows that never committed
        self._graph_stale = False

    def load_graph(self, session: Session) -> ActiveGraph:
        """Load the run's active graph (in a unit of work of the caller's)."""
        node_rows, edge_rows = queries.active_graph_rows(session, self._run.run_id)
        graph = ActiveGraph(self._topology)
        graph.load(
            (
                GraphNode(
                    row.id,
                    row.instance,
                    row.num,
                    codecs.metadata_from_row(row),
                    row.is_restart,
                    self._topology.peers(row.instance),
                )
                for row in node_rows
                if row.instance in self._topology.instance_set
            ),
            edge_rows,
        )
        self.graph = graph
        return graph

    def process(
        self, registrations: list[Registration], staged: list[Staged] | None = None
    ) -> list[Outcome]:
        """Process registrations in order, in one transaction; write files after.

        Args:
            registrations: What to process, in order.
            staged: The staged registrations whose submission rows to insert.
        """
        now = datetime.now(timezone.utc)
        if self._graph_stale:
            run_transaction(self._store.engine, self.load_graph)
            self._graph_stale = False
        files: list[Path] = []
        try:
            batch = Batch(staged=staged or [])
            outcomes = [
                self._plan(batch, instance, metadata, submission, now)
                for instance, metadata, submission in registrations
            ]
            files = [
                item.path for item in batch.workflow_snapshots if item.path is not None
            ]
            # unwritten from before their rows can be seen until they are written
            self._files.expect(files)
            self._store.write(
                lambda connection: self._write_rows(connection, batch, now),
                # only this run's writer adds nodes to it
                landed=lambda connection, first_node: self._store.row_exists(
                    connection, statements.NODE, first_node
                ),
            )
        except BaseException:
            self._files.forget(files)
            # the graph holds what did not commit: reload it, now or before next use
            self._graph_stale = True
            run_transaction(self._store.engine, self.load_graph)
            self._graph_stale = False
            raise
        for outcome in outcomes:
            self._write_files(outcome.found)
        if batch.workflow_snapshots and self._on_workflow_snapshots is not None:
            try:
                self._on_workflow_snapshots()
            except Exception:  # the registration has committed; it stands
                _logger.warning("The workflow snapshot listener failed", exc_info=True)
        return outcomes

    def _write_files(self, found: list[Found]) -> None:
        """Write the files of one registration's workflow snapshots (committed)."""
        self._files.retry()
        for item in found:
            if item.path is not None:
                self._files.write_workflow_snapshot(
                    item.path, item.resume, item.description
                )

    def commit_submissions(self, batch: list[Staged]) -> Sequence[int]:
        """Commit only the submission rows of staged registrations, unprocessed.

        Returns:
            Their submission ids, in order.
        """
        now = datetime.now(timezone.utc)

        def work(connection: Connection) -> Sequence[int]:
            self._store.heartbeat_if_due(connection)
            self._insert_submissions(
                connection,
                batch,
                statements.allocate_ids(
                    connection,
                    statements.SUBMISSION,
                    len(batch),
                    writer=self._store.run_writer,
                ),
                now,
            )
            return [item.allocated_id or 0 for item in batch]

        def landed(connection: Connection, ids: Sequence[int]) -> bool:
            # only this run's writer adds submissions to it
            return self._store.row_exists(connection, statements.SUBMISSION, ids[0])

        return self._store.write(work, landed=landed)

    def _plan(
        self,
        batch: Batch,
        instance: str,
        metadata: SnapshotMetadata,
        submission: int | Staged | None,
        now: datetime,
    ) -> Outcome:
        """Apply one registration to the in-memory graph and note its rows."""
        node = self.graph.new_node(0, instance, metadata, False)
        batch.nodes.append((node, submission))
        batch.file_sizes.append(snapshot_file_size(metadata.snapshot_filename))
        batch.edges.extend(
            (node, peer) for peer in self.graph.add(node) if peer is not node
        )
        outcome = Outcome(node, created_at=now)
        found = self.graph.find_workflow_snapshots(node, self._policy)
        if not found:
            return outcome
        taken = datetime.now()
        for nodes in found:
            members = [Member(n.instance, n.metadata, n.is_restart) for n in nodes]
            path = None
            if self._allocator is not None:
                path = self._allocator.allocate(taken, batch.paths)
                batch.paths.add(str(path))
            outcome.found.append(
                Found(
                    nodes,
                    path,
                    describe(self._topology.model_name, members, taken),
                    resume_mapping(members),
                )
            )
        batch.workflow_snapshots.extend(outcome.found)
        retirement = self.graph.plan_retirement(found)
        batch.retired.extend(retirement.retired)
        self.graph.retire(retirement)
        return outcome

    def _write_rows(self, connection: Connection, batch: Batch, now: datetime) -> int:
        """Insert a batch's rows: nodes, edges, workflow snapshots, members.

        Returns:
            The id of the batch's first node, to tell later whether it committed.
        """
        self._store.heartbeat_if_due(connection)
        ids = statements.allocate_many(
            connection,
            {
                statements.SUBMISSION: len(batch.staged),
                statements.NODE: len(batch.nodes),
                statements.WORKFLOW_SNAPSHOT: len(batch.workflow_snapshots),
            },
            writer=self._store.run_writer,
        )
        # every statement from here on returns no rows: one wait for all of them
        with sending.pipelined(connection, _statements_to_send(batch)):
            self._insert_rows(connection, batch, ids, now)
        return batch.nodes[0][0].id

    def _insert_rows(
        self,
        connection: Connection,
        batch: Batch,
        ids: dict[Table, list[int]],
        now: datetime,
    ) -> None:
        """The batch's rows, with the ids reserved for them."""
        if batch.staged:
            self._insert_submissions(
                connection, batch.staged, ids[statements.SUBMISSION], now
            )
        for (node, _), node_id in zip(batch.nodes, ids[statements.NODE], strict=True):
            node.id = node_id
        run_id = self._run.run_id
        statements.FAST_NODE.execute(
            connection,
            [
                (
                    node.id,
                    run_id,
                    node.instance,
                    node.num,
                    False,
                    submission.allocated_id
                    if isinstance(submission, Staged)
                    else submission,
                    now,
                    *codecs.node_values(node.metadata),
                    size,
                )
                for (node, submission), size in zip(
                    batch.nodes, batch.file_sizes, strict=True
                )
            ],
        )
        statements.FAST_EDGE.execute(
            connection,
            [
                (min(node.id, peer.id), max(node.id, peer.id))
                for node, peer in batch.edges
            ],
        )
        if batch.workflow_snapshots:
            self._write_workflow_snapshots(
                connection,
                batch.workflow_snapshots,
                ids[statements.WORKFLOW_SNAPSHOT],
                now,
            )
        statements.FAST_RETIRE.execute(
            connection, [(node.id, now) for node in batch.retired]
        )

    def _write_workflow_snapshots(
        self,
        connection: Connection,
        found: list[Found],
        snapshot_ids: list[int],
        now: datetime,
    ) -> None:
        run_id = self._run.run_id
        statements.FAST_WORKFLOW_SNAPSHOT.execute(
            connection,
            [
                (
                    snapshot_id,
                    run_id,
                    # without a folder there is no file; keep paths unique
                    str(item.path.resolve())
                    if item.path is not None
                    else f"(no file) run {run_id} {uuid.uuid4().hex}",
                    item.description,
                    now,
                )
                for item, snapshot_id in zip(found, snapshot_ids, strict=True)
            ],
        )
        member_rows: list[tuple[int, int]] = []
        for item, snapshot_id in zip(found, snapshot_ids, strict=True):
            item.id = snapshot_id
            member_rows.extend((snapshot_id, member.id) for member in item.nodes)
        statements.FAST_MEMBER.execute(connection, member_rows)

    def _insert_submissions(
        self,
        connection: Connection,
        batch: list[Staged],
        ids: list[int],
        now: datetime,
    ) -> None:
        """Insert the submission rows of staged registrations, with these ids."""
        rows = []
        for item, submission_id in zip(batch, ids, strict=True):
            item.allocated_id = submission_id
            rows.append(
                (
                    submission_id,
                    self._run.run_id,
                    item.instance,
                    codecs.metadata_to_json(item.metadata),
                    now,
                )
            )
        statements.FAST_SUBMISSION.execute(connection, rows)


def _statements_to_send(batch: Batch) -> int:
    """How many statements :meth:`BatchWriter._insert_rows` sends (one per table
    that has rows; nodes always have)."""
    return (
        1
        + bool(batch.staged)
        + bool(batch.edges)
        + 2 * bool(batch.workflow_snapshots)
        + bool(batch.retired)
    )
