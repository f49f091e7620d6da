"""The active part of the snapshot graph, held in memory and kept in step.

The database holds every node and edge; the registry also keeps the *active* ones
here, loaded with two queries when a registry opens a run and then kept in step with
each committed registration. Retired nodes are never loaded, so memory follows the
size of the live graph, not the campaign's history. If a transaction fails, the
registry throws this graph away and loads it again, so it never has to undo a
half-applied change.

The searches that find the workflow snapshots containing a new node are
:mod:`snapreg.rules.search`'s.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from snapreg.rules.consistency import MessageCounts, Rule, rules_hold
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.search import enumerate_workflow_snapshots, newest_workflow_snapshot
from snapreg.rules.topology import Topology

Policy = Literal["all", "latest"]
POLICIES: tuple[Policy, ...] = ("all", "latest")

# A peer with at least this many active nodes is searched by bisection.
_BISECT_FROM = 8


def _count(counts: MessageCounts, port: str, slot: int | None) -> int:
    """The count of one slot of a port; a missing one is zero."""
    values = counts.get(port, ())
    index = slot or 0
    return values[index] if index < len(values) else 0


class GraphNode:
    """An active snapshot node, with links to the active nodes it is consistent with.

    Attributes:
        id: Row id of the node.
        instance: Its instance.
        num: Its number within the instance and run.
        metadata: What the instance reported.
        is_restart: Whether it is the instance's restart node.
        peers: The peer instances of its instance.
        consistent_peers: Per peer instance, the active nodes consistent with it.
    """

    __slots__ = (
        "id",
        "instance",
        "num",
        "metadata",
        "is_restart",
        "peers",
        "consistent_peers",
        "peers_covered",
    )

    def __init__(
        self,
        id: int,
        instance: str,
        num: int,
        metadata: SnapshotMetadata,
        is_restart: bool,
        peers: frozenset[str],
    ) -> None:
        self.id = id
        self.instance = instance
        self.num = num
        self.metadata = metadata
        self.is_restart = is_restart
        self.peers = peers
        self.consistent_peers: dict[str, list[GraphNode]] = {}
        #: number of peers with at least one consistent node
        self.peers_covered = 0

    @property
    def locally_consistent(self) -> bool:
        """Whether every peer has at least one active node consistent with it."""
        return self.peers_covered == len(self.peers)

    def __repr__(self) -> str:
        return f"GraphNode({self.instance}#{self.num}, id={self.id})"


@dataclass
class RetirementPlan:
    """What the clean-up after found workflow snapshots will retire."""

    oldest_kept: dict[str, int] = field(default_factory=dict)
    retired: list[GraphNode] = field(default_factory=list)


class ActiveGraph:
    """Active snapshot nodes of one run, per instance in ascending num.

    Besides the nodes it counts, per instance, the locally consistent ones, and how
    many instances have none: while any instance has none, no workflow snapshot can
    exist, which is known without looking at a single node.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, list[GraphNode]] = {
            instance: [] for instance in topology.instances
        }
        self.next_num: dict[str, int] = {instance: 1 for instance in topology.instances}
        self.candidate_count: dict[str, int] = {
            instance: 0 for instance in topology.instances
        }
        self.instances_without_candidates = len(topology.instances)
        # per instance, per (port, slot): whether its active nodes' counts ascend
        self._order: dict[str, dict[tuple[str, int], bool]] = {}

    # ----------------------------------------------------------------- structure

    def new_node(
        self, id: int, instance: str, metadata: SnapshotMetadata, is_restart: bool
    ) -> GraphNode:
        """A node for the instance's next num (not yet in the graph)."""
        return GraphNode(
            id,
            instance,
            self.next_num[instance],
            metadata,
            is_restart,
            self.topology.peers(instance),
        )

    def add(self, node: GraphNode) -> list[GraphNode]:
        """Add a node and link it to every consistent active node of its peers.

        Returns:
            The peer nodes it was found consistent with (its new edges).
        """
        self._insert(node)
        consistent: list[GraphNode] = []
        own_counts = node.metadata.port_message_counts
        for peer in node.peers:
            rules = self.topology.rules(node.instance, peer)
            for peer_node in self._within_reach(node, peer, rules):
                if rules_hold(
                    own_counts,
                    peer_node.metadata.port_message_counts,
                    peer_node.is_restart,
                    rules,
                ):
                    self._link(node, peer_node)
                    consistent.append(peer_node)
        return consistent

    def load(
        self, nodes: Iterable[GraphNode], edges: Iterable[tuple[int, int]]
    ) -> None:
        """Fill an empty graph with stored active nodes and the edges between them."""
        by_id: dict[int, GraphNode] = {}
        for node in sorted(nodes, key=lambda node: node.num):
            self._insert(node)
            by_id[node.id] = node
        for lower_id, higher_id in edges:
            self._link(by_id[lower_id], by_id[higher_id])

    def _within_reach(
        self, node: GraphNode, peer: str, rules: tuple[Rule, ...]
    ) -> list[GraphNode]:
        """The peer's nodes that can be consistent with ``node``, a few to check.

        Every rule compares one count of each side, and consistent counts differ
        by at most one. A peer's counts never decrease from one node to the next
        (checked, not assumed: see :meth:`_ascending`), so the nodes whose count
        on the first rule is within one of ``node``'s are a contiguous run, found
        by bisection instead of checking every active node of the peer.
        """
        peer_nodes = self.nodes[peer]
        if len(peer_nodes) < _BISECT_FROM or not rules:
            return peer_nodes
        rule = rules[0]
        key = (rule.peer_port, rule.peer_slot or 0)
        if not self._ascending(peer, key):
            return peer_nodes
        own = _count(node.metadata.port_message_counts, rule.own_port, rule.own_slot)
        port, slot = key

        def count(candidate: GraphNode) -> int:
            return _count(candidate.metadata.port_message_counts, port, slot)

        low = bisect.bisect_left(peer_nodes, own - 1, key=count)
        high = bisect.bisect_right(peer_nodes, own + 1, lo=low, key=count)
        return peer_nodes[low:high]

    def _ascending(self, instance: str, key: tuple[str, int]) -> bool:
        """Whether the instance's active nodes have non-decreasing counts at key.

        Worked out once per key, then kept up to date as nodes are added.
        """
        known = self._order.setdefault(instance, {})
        ascending = known.get(key)
        if ascending is None:
            port, slot = key
            counts = [
                _count(node.metadata.port_message_counts, port, slot)
                for node in self.nodes[instance]
            ]
            ascending = all(a <= b for a, b in itertools.pairwise(counts))
            known[key] = ascending
        return ascending

    def _insert(self, node: GraphNode) -> None:
        known = self._order.get(node.instance)
        nodes = self.nodes[node.instance]
        if known and nodes:
            last = nodes[-1].metadata.port_message_counts
            counts = node.metadata.port_message_counts
            for (port, slot), ascending in known.items():
                if ascending and _count(counts, port, slot) < _count(last, port, slot):
                    known[(port, slot)] = False
        self.nodes[node.instance].append(node)
        self.next_num[node.instance] = node.num + 1
        if node.locally_consistent:  # an instance without peers
            self._count(node, +1)

    def _count(self, node: GraphNode, change: int) -> None:
        before = self.candidate_count[node.instance]
        self.candidate_count[node.instance] = before + change
        if before == 0:
            self.instances_without_candidates -= 1
        elif before + change == 0:
            self.instances_without_candidates += 1

    def _link(self, first: GraphNode, second: GraphNode) -> None:
        self._add_half(first, second)
        if second is not first:
            self._add_half(second, first)

    def _add_half(self, node: GraphNode, other: GraphNode) -> None:
        linked = node.consistent_peers.get(other.instance)
        if linked is not None:
            linked.append(other)
            return
        node.consistent_peers[other.instance] = [other]
        node.peers_covered += 1
        if node.locally_consistent:
            self._count(node, +1)

    def _remove_half(self, node: GraphNode, other: GraphNode) -> None:
        linked = node.consistent_peers[other.instance]
        linked.remove(other)
        if linked:
            return
        was_consistent = node.locally_consistent
        del node.consistent_peers[other.instance]
        node.peers_covered -= 1
        if was_consistent:
            self._count(node, -1)

    def candidates(self, instance: str) -> set[GraphNode]:
        """The active, locally consistent nodes of an instance."""
        return {node for node in self.nodes[instance] if node.locally_consistent}

    def active_count(self) -> int:
        """How many nodes are active."""
        return sum(len(nodes) for nodes in self.nodes.values())

    # ------------------------------------------------------------------ searches

    def find_workflow_snapshots(
        self, node: GraphNode, policy: Policy = "all"
    ) -> list[list[GraphNode]]:
        """The workflow snapshots that contain ``node``, each as a list of nodes.

        Args:
            node: The node just added.
            policy: ``"all"`` for every one (MUSCLE3's behaviour), ``"latest"`` for
                only the newest.
        """
        if node.is_restart or not node.locally_consistent:
            return []
        # Every other instance needs a candidate (node's own instance has node).
        if self.instances_without_candidates:
            return []
        if policy == "latest":
            newest = newest_workflow_snapshot(self, node)
            return [] if newest is None else [newest]
        return list(enumerate_workflow_snapshots(self, node))

    # ------------------------------------------------------------------ clean-up

    def plan_retirement(
        self, workflow_snapshots: list[list[GraphNode]]
    ) -> RetirementPlan:
        """The nodes that clean-up retires after these workflow snapshots were found.

        Per instance, the newest member over all of them is the oldest node kept.
        """
        plan = RetirementPlan()
        for workflow_snapshot in workflow_snapshots:
            for member in workflow_snapshot:
                if member.num > plan.oldest_kept.get(member.instance, 0):
                    plan.oldest_kept[member.instance] = member.num
        for instance, oldest_kept in plan.oldest_kept.items():
            for candidate in self.nodes[instance]:
                if candidate.num >= oldest_kept:
                    break
                plan.retired.append(candidate)
        return plan

    def retire(self, plan: RetirementPlan) -> None:
        """Apply a retirement plan: drop the nodes and their edges from memory."""
        retired = {id(node) for node in plan.retired}
        for instance, oldest_kept in plan.oldest_kept.items():
            nodes = self.nodes[instance]
            keep_from = 0
            while keep_from < len(nodes) and nodes[keep_from].num < oldest_kept:
                keep_from += 1
            del nodes[:keep_from]
        for node in plan.retired:
            if node.locally_consistent:
                self._count(node, -1)
            for peer_nodes in node.consistent_peers.values():
                for peer_node in peer_nodes:
                    if id(peer_node) not in retired:
                        self._remove_half(peer_node, node)
