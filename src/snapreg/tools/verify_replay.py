"""``snapreg verify``'s replay of one run: its stored nodes through the rules.

The registry processes a run's registrations one at a time on an
:class:`~snapreg.rules.graph.ActiveGraph`: a new node is compared with the active
nodes of its peers (its consistent pairs), the workflow snapshots containing it are
searched by the run's policy, and the nodes those make obsolete are retired. Node
ids are allocated in that processing order (the restart nodes first, when the run
is created; then each batch's nodes in order, under the run's writer lease:
``statements.allocate_many``), so replaying the stored nodes in id order on a fresh
graph re-derives, node by node, what the registry stored:

* the consistent pairs whose newer node it is (``higher_node_id``);
* the workflow snapshots whose newest member it is;
* the nodes those retire.

The stored rows are read side by side with the nodes, in streams ordered by the
node they belong to (:mod:`snapreg.tools.verify_rows`), so memory holds the active
graph and the rows of one node, not the run. A stored workflow snapshot the replay
does not give is checked on its own: one member per instance of the run, every
pair of peers consistent by the rules applied to their stored counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import Connection

from snapreg.rules.consistency import rules_hold
from snapreg.rules.graph import ActiveGraph, GraphNode
from snapreg.rules.topology import Topology
from snapreg.storage.codecs import metadata_from_row
from snapreg.tools.explain import count_mismatches
from snapreg.tools.verify_findings import Findings, Problem, ProblemKind, node_words
from snapreg.tools.verify_rows import (
    Merge,
    RunInfo,
    StoredWorkflowSnapshot,
    node_row,
    run_nodes,
    stored_pairs,
    stored_workflow_snapshots,
)


class _Side(NamedTuple):
    """One end of a pair, read alike from the graph and from a row."""

    id: int
    run_id: int
    instance: str
    num: int
    is_restart: bool
    port_message_counts: Any


def _counts_readable(counts: Any) -> bool:
    """Whether stored message counts are what the rules can read: port -> ints."""
    return isinstance(counts, dict) and all(
        isinstance(port, str)
        and isinstance(slots, list)
        and all(type(count) is int for count in slots)
        for port, slots in counts.items()
    )


def _mismatch_words(topology: Topology, newer: Any, older: Any) -> str:
    """Why two nodes of peer instances are not consistent, as the registry
    compares them (the newer node's side first)."""
    found = count_mismatches(
        topology,
        newer.instance,
        newer.port_message_counts,
        older.instance,
        older.port_message_counts,
        older.is_restart,
    )
    return "; ".join(mismatch.in_words() for mismatch in found)


class RunReplay:
    """Replays one run and compares each node's rows with what the rules give.

    Attributes:
        nodes: Nodes replayed.
        pairs: Stored consistent pairs compared.
        workflow_snapshots: Stored workflow snapshots compared.
    """

    def __init__(
        self,
        connection: Connection,
        run: RunInfo,
        findings: Findings,
        check_files: Callable[[RunInfo, StoredWorkflowSnapshot], None],
        tick: Callable[[], None],
    ) -> None:
        self._connection = connection
        self._run = run
        self._findings = findings
        self._check_files = check_files
        self._tick = tick
        self._graph = ActiveGraph(run.topology)
        # the replay's active nodes: the node, and whether its row says retired
        self._active: dict[int, tuple[GraphNode, bool]] = {}
        self.nodes = self.pairs = self.workflow_snapshots = 0

    def replay(self) -> None:
        """Replay the run's nodes in id order, comparing as it goes."""
        run_id = self._run.id
        pairs = Merge(
            stored_pairs(self._connection, run_id), lambda row: row.higher_node_id
        )
        stored = Merge(
            stored_workflow_snapshots(self._connection, run_id),
            lambda snapshot: snapshot.newest,
        )
        for row in run_nodes(self._connection, run_id):
            passed, here = stored.take(row.id)
            for snapshot in passed:  # newest member not a node of this run
                self._unmatched(snapshot)
            _, pair_rows = pairs.take(row.id)
            self._replay_node(row, {pair.lower_node_id for pair in pair_rows}, here)
            self.nodes += 1
            self.pairs += len(pair_rows)
            self._tick()
        for snapshot in stored.rest():
            self._unmatched(snapshot)
        for node, retired in self._active.values():
            if retired:
                self._problem(
                    "retirement",
                    f"{self._words(node)} is retired in its row, but no workflow"
                    " snapshot the rules give retires it",
                    nodes=(node.id,),
                )

    # ------------------------------------------------------------------ nodes

    def _replay_node(
        self, row: Any, stored_pairs: set[int], stored: list[StoredWorkflowSnapshot]
    ) -> None:
        topology = self._run.topology
        words = node_words(row.instance, row.num, row.id)
        if row.instance not in topology.instance_set or not _counts_readable(
            row.port_message_counts
        ):
            what = (
                f"names instance {row.instance!r}, which model"
                f" {self._run.model_name} does not have"
                if row.instance not in topology.instance_set
                else "has message counts that are not lists of integers per port"
            )
            self._problem("bad_row", f"{words} {what}", nodes=(row.id,))
            for other in sorted(stored_pairs):
                self._stored_pair(row, other)
            for snapshot in stored:
                self._unmatched(snapshot)
            return
        expected = self._graph.next_num[row.instance]
        if row.is_restart != (row.num == 1):
            self._problem(
                "node_order",
                f"{words} is {'' if row.is_restart else 'not '}a restart node, but"
                " every instance's restart node is its #1, and only that",
                nodes=(row.id,),
            )
        elif row.num != expected:
            self._problem(
                "node_order",
                f"{words} comes in id order where {row.instance} #{expected} should:"
                " node ids are not in registration order",
                nodes=(row.id,),
            )
        node = GraphNode(
            row.id,
            row.instance,
            row.num,
            metadata_from_row(row),
            row.is_restart,
            topology.peers(row.instance),
        )
        replayed = {peer.id: peer for peer in self._graph.add(node) if peer is not node}
        self._active[node.id] = (node, row.retired_at is not None)
        for peer_id, peer in replayed.items():
            if peer_id not in stored_pairs:
                self._problem(
                    "missing_pair",
                    f"{self._words(peer)} and {words} are consistent by the rules"
                    f" and were both active when node {row.id} was registered, but"
                    " no consistent_pair row holds them",
                    nodes=(peer_id, row.id),
                )
        for other in sorted(stored_pairs):
            if other not in replayed:
                self._stored_pair(row, other)
        found = (
            []
            if row.is_restart
            else self._graph.find_workflow_snapshots(node, self._run.policy)
        )
        self._compare_workflow_snapshots(node, found, stored)
        if found:
            plan = self._graph.plan_retirement(found)
            for retired in plan.retired:
                _, retired_in_rows = self._active.pop(retired.id)
                if not retired_in_rows:
                    self._problem(
                        "retirement",
                        f"{self._words(retired)} is active in its row, but the"
                        f" workflow snapshots found at node {row.id} retire it",
                        nodes=(retired.id, row.id),
                    )
            self._graph.retire(plan)

    def _stored_pair(self, row: Any, other_id: int) -> None:
        """A stored pair of ``row`` (its higher_node_id) the replay does not give."""
        ids = (other_id, row.id)
        if other_id == row.id:
            self._problem(
                "unexplained_pair",
                f"a consistent_pair row pairs node {row.id} with itself",
                nodes=ids,
            )
            return
        held = self._active.get(other_id)
        other: Any = None
        if held is not None:
            node = held[0]
            other = _Side(
                node.id,
                self._run.id,
                node.instance,
                node.num,
                node.is_restart,
                node.metadata.port_message_counts,
            )
        else:
            other = node_row(self._connection, other_id)
        if other is None:
            self._problem(
                "unexplained_pair",
                f"a consistent_pair row pairs node {row.id} with node {other_id},"
                " which does not exist",
                nodes=ids,
            )
            return
        topology = self._run.topology
        words = f"{self._words(other)} and {node_words(row.instance, row.num, row.id)}"
        newer, older = (other, row) if other.id > row.id else (row, other)
        if (
            row.instance not in topology.instance_set
            or other.instance not in topology.peers(row.instance)
            or not _counts_readable(other.port_message_counts)
            or not _counts_readable(row.port_message_counts)
        ):
            self._problem(
                "unexplained_pair",
                f"{words} are paired, but their instances are not peers in model"
                f" {self._run.model_name}",
                nodes=ids,
            )
        elif not rules_hold(
            newer.port_message_counts,
            older.port_message_counts,
            older.is_restart,
            topology.rules(newer.instance, older.instance),
        ):
            self._problem(
                "unexplained_pair",
                f"{words} are paired, but the rules say they are not consistent: "
                + _mismatch_words(topology, newer, older),
                nodes=ids,
            )
        else:
            if other.run_id != self._run.id:
                why = "they belong to different runs"
            elif other.id > row.id:
                why = f"the row names the newer node {other.id} as lower_node_id"
            else:
                why = f"node {other.id} was retired before node {row.id} came"
            self._problem(
                "extra_pair",
                f"{words} are consistent by the rules, but the registry would not"
                f" have paired them: {why}",
                nodes=ids,
            )

    # ------------------------------------------------------- workflow snapshots

    def _compare_workflow_snapshots(
        self,
        node: GraphNode,
        found: list[list[GraphNode]],
        stored: list[StoredWorkflowSnapshot],
    ) -> None:
        replayed = Counter(frozenset(member.id for member in nodes) for nodes in found)
        for snapshot in stored:
            key = frozenset(row.member_id for row in snapshot.members)
            if replayed[key]:
                replayed[key] -= 1
                self.workflow_snapshots += 1
                self._check_files(self._run, snapshot)
            else:
                self._unmatched(snapshot)
        for nodes in found:
            key = frozenset(member.id for member in nodes)
            if replayed[key]:
                replayed[key] -= 1
                members = ", ".join(
                    self._words(member)
                    for member in sorted(nodes, key=lambda member: member.id)
                )
                self._problem(
                    "missing_workflow_snapshot",
                    f"when node {node.id} was registered, the rules give a workflow"
                    f" snapshot of {members}; no workflow_snapshot row holds it",
                    nodes=tuple(sorted(key)),
                )

    def _unmatched(self, snapshot: StoredWorkflowSnapshot) -> None:
        """A stored workflow snapshot the replay does not give: why not."""
        self.workflow_snapshots += 1
        self._check_files(self._run, snapshot)
        topology = self._run.topology
        where = f"workflow snapshot {snapshot.id} ({snapshot.path})"
        wrong: list[str] = []
        by_instance: dict[str, Any] = {}
        for row in snapshot.members:
            if row.id is None:
                wrong.append(f"member node {row.member_id} does not exist")
            elif row.run_id != self._run.id:
                wrong.append(f"member node {row.id} belongs to another run")
            elif row.instance not in topology.instance_set:
                wrong.append(f"member node {row.id} is of unknown {row.instance}")
            elif row.instance in by_instance:
                wrong.append(f"it has two members of {row.instance}")
            elif not _counts_readable(row.port_message_counts):
                wrong.append(f"member node {row.id} has unreadable message counts")
            else:
                by_instance[row.instance] = row
        lacking = [name for name in topology.instances if name not in by_instance]
        if lacking:
            shown = ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else "")
            wrong.append(f"it has no member of {shown}")
        member_ids = tuple(sorted(row.member_id for row in snapshot.members))
        if wrong:
            self._problem(
                "incomplete_members",
                f"{where}: " + "; ".join(wrong),
                workflow_snapshot=snapshot.id,
                nodes=member_ids,
                path=snapshot.path,
            )
            return
        inconsistent = False
        for row in by_instance.values():
            for peer in topology.peers(row.instance):
                other = by_instance[peer]
                if other.id >= row.id:
                    continue  # each pair once, the newer node's side first
                if not rules_hold(
                    row.port_message_counts,
                    other.port_message_counts,
                    other.is_restart,
                    topology.rules(row.instance, peer),
                ):
                    inconsistent = True
                    self._problem(
                        "inconsistent_members",
                        f"{where}: members"
                        f" {node_words(other.instance, other.num, other.id)} and"
                        f" {node_words(row.instance, row.num, row.id)} are not"
                        " consistent: " + _mismatch_words(topology, row, other),
                        workflow_snapshot=snapshot.id,
                        nodes=(other.id, row.id),
                        path=snapshot.path,
                    )
        if not inconsistent:
            newest = max(by_instance.values(), key=lambda row: row.id)
            self._problem(
                "extra_workflow_snapshot",
                f"{where}: its members are consistent, but the rules (policy"
                f" {self._run.policy}) do not give it when its newest member"
                f" {node_words(newest.instance, newest.num, newest.id)} was"
                " registered",
                workflow_snapshot=snapshot.id,
                nodes=member_ids,
                path=snapshot.path,
            )

    # ----------------------------------------------------------------- helpers

    def _words(self, node: Any) -> str:
        return node_words(node.instance, node.num, node.id)

    def _problem(
        self,
        kind: ProblemKind,
        message: str,
        *,
        workflow_snapshot: int | None = None,
        nodes: tuple[int, ...] = (),
        path: str | None = None,
    ) -> None:
        self._findings.add(
            Problem(
                kind,
                f"run {self._run.number}: {message}",
                run=self._run.number,
                workflow_snapshot=workflow_snapshot,
                nodes=nodes,
                path=path,
            )
        )
