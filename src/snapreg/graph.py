"""The active part of the snapshot graph, held in memory, and the search over it.

The database holds every node and edge; the registry also keeps the *active* ones
here, loaded with two queries when a registry opens a run and then kept in step with
each committed registration. Retired nodes are never loaded, so memory follows the
size of the live graph, not the campaign's history. If a transaction fails, the
registry throws this graph away and loads it again, so it never has to undo a
half-applied change.

The search finds every workflow snapshot that contains a new node: one active,
locally consistent node per instance, such that every pair of peers is an edge. It
is a depth-first search with forward checking: choosing a node for one instance
narrows the candidates of its unassigned peers to the nodes it is consistent with,
and the instance with the fewest candidates left is chosen next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from snapreg.consistency import Topology, counts_consistent
from snapreg.metadata import SnapshotMetadata


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
        "_peers_covered",
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
        # number of peers with at least one consistent node
        self._peers_covered = 0

    @property
    def locally_consistent(self) -> bool:
        """Whether every peer has at least one active node consistent with it."""
        return self._peers_covered == len(self.peers)

    def link(self, other: GraphNode) -> None:
        """Record that this node and ``other`` are consistent (both directions)."""
        self._add(other)
        if other is not self:
            other._add(self)

    def unlink(self, other: GraphNode) -> None:
        """Forget the edge to ``other`` on this side only."""
        nodes = self.consistent_peers[other.instance]
        nodes.remove(other)
        if not nodes:
            del self.consistent_peers[other.instance]
            self._peers_covered -= 1

    def _add(self, other: GraphNode) -> None:
        nodes = self.consistent_peers.get(other.instance)
        if nodes is None:
            self.consistent_peers[other.instance] = [other]
            self._peers_covered += 1
        else:
            nodes.append(other)

    def __repr__(self) -> str:
        return f"GraphNode({self.instance}#{self.num}, id={self.id})"


@dataclass
class RetirementPlan:
    """What the clean-up after found workflow snapshots will retire."""

    oldest_kept: dict[str, int] = field(default_factory=dict)
    retired: list[GraphNode] = field(default_factory=list)


class ActiveGraph:
    """Active snapshot nodes of one run, per instance in ascending num."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, list[GraphNode]] = {
            instance: [] for instance in topology.instances
        }
        self.next_num: dict[str, int] = {instance: 1 for instance in topology.instances}

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
        self.nodes[node.instance].append(node)
        self.next_num[node.instance] = node.num + 1
        consistent: list[GraphNode] = []
        own_counts = node.metadata.port_message_counts
        for peer in node.peers:
            connections = self.topology.connections(node.instance, peer)
            for peer_node in self.nodes[peer]:
                if counts_consistent(
                    node.instance,
                    own_counts,
                    peer,
                    peer_node.metadata.port_message_counts,
                    peer_node.is_restart,
                    connections,
                ):
                    node.link(peer_node)
                    consistent.append(peer_node)
        return consistent

    def load(
        self, nodes: Iterable[GraphNode], edges: Iterable[tuple[int, int]]
    ) -> None:
        """Fill an empty graph with stored active nodes and the edges between them."""
        by_id: dict[int, GraphNode] = {}
        for node in sorted(nodes, key=lambda node: node.num):
            self.nodes[node.instance].append(node)
            self.next_num[node.instance] = node.num + 1
            by_id[node.id] = node
        for lower_id, higher_id in edges:
            by_id[lower_id].link(by_id[higher_id])

    def active_count(self) -> int:
        """How many nodes are active."""
        return sum(len(nodes) for nodes in self.nodes.values())

    def find_workflow_snapshots(self, node: GraphNode) -> list[list[GraphNode]]:
        """Every workflow snapshot that contains ``node``, each as a list of nodes."""
        return list(_enumerate_workflow_snapshots(self, node))

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
            for peer_nodes in node.consistent_peers.values():
                for peer_node in peer_nodes:
                    if id(peer_node) not in retired:
                        peer_node.unlink(node)


def _enumerate_workflow_snapshots(
    graph: ActiveGraph, node: GraphNode
) -> Iterator[list[GraphNode]]:
    """Depth-first search with forward checking; see the module docstring."""
    if node.is_restart or not node.locally_consistent:
        return
    domains: dict[str, set[GraphNode]] = {}
    for instance, nodes in graph.nodes.items():
        if instance == node.instance:
            continue
        candidates = {candidate for candidate in nodes if candidate.locally_consistent}
        if not candidates:
            return
        domains[instance] = candidates
    unassigned = set(domains)
    for peer, peer_nodes in node.consistent_peers.items():
        if peer in unassigned:
            domains[peer] = domains[peer].intersection(peer_nodes)
            if not domains[peer]:
                return
    assignment: dict[str, GraphNode] = {node.instance: node}
    if not unassigned:
        yield [node]
        return

    stack: list[_Frame] = [_Frame.choose(domains, unassigned)]
    while stack:
        frame = stack[-1]
        frame.undo(domains)
        assignment.pop(frame.instance, None)
        candidate = frame.next_candidate()
        if candidate is None:
            stack.pop()
            unassigned.add(frame.instance)
            continue
        if not frame.narrow(candidate, domains, unassigned):
            continue
        assignment[frame.instance] = candidate
        if unassigned:
            stack.append(_Frame.choose(domains, unassigned))
        else:
            yield list(assignment.values())


class _Frame:
    """One level of the search: an instance and the candidates still to try."""

    __slots__ = ("instance", "candidates", "position", "changes")

    def __init__(self, instance: str, candidates: list[GraphNode]) -> None:
        self.instance = instance
        self.candidates = candidates
        self.position = 0
        self.changes: list[tuple[str, set[GraphNode]]] = []

    @staticmethod
    def choose(domains: dict[str, set[GraphNode]], unassigned: set[str]) -> _Frame:
        """Pick the unassigned instance with the fewest candidates."""
        instance = min(unassigned, key=lambda name: len(domains[name]))
        unassigned.remove(instance)
        candidates = sorted(domains[instance], key=lambda node: node.num)
        return _Frame(instance, candidates)

    def next_candidate(self) -> GraphNode | None:
        if self.position == len(self.candidates):
            return None
        candidate = self.candidates[self.position]
        self.position += 1
        return candidate

    def narrow(
        self,
        candidate: GraphNode,
        domains: dict[str, set[GraphNode]],
        unassigned: set[str],
    ) -> bool:
        """Restrict unassigned peers to the candidate's consistent nodes.

        Returns:
            False if some peer is left without candidates.
        """
        for peer, peer_nodes in candidate.consistent_peers.items():
            if peer in unassigned:
                narrowed = domains[peer].intersection(peer_nodes)
                self.changes.append((peer, domains[peer]))
                domains[peer] = narrowed
                if not narrowed:
                    return False
        return True

    def undo(self, domains: dict[str, set[GraphNode]]) -> None:
        for peer, previous in reversed(self.changes):
            domains[peer] = previous
        self.changes.clear()
