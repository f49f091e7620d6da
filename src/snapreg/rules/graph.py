"""The active part of the snapshot graph, held in memory, and the searches over it.

The database holds every node and edge; the registry also keeps the *active* ones
here, loaded with two queries when a registry opens a run and then kept in step with
each committed registration. Retired nodes are never loaded, so memory follows the
size of the live graph, not the campaign's history. If a transaction fails, the
registry throws this graph away and loads it again, so it never has to undo a
half-applied change.

Two searches find the workflow snapshots that contain a new node (one active,
locally consistent node per instance, every pair of peers an edge):

``policy="all"`` (MUSCLE3's behaviour) enumerates every such set: a depth-first
search with forward checking. Choosing a node narrows the candidates of its peers
to the nodes it is consistent with; the instance with the fewest candidates is
chosen next (a heap, so a choice costs log N, not N). Candidate sets are built only
when an instance is reached, and the new node's own peers are narrowed first, so a
registration that completes nothing usually costs time in the number of its peers,
not of all instances.

``policy="latest"`` finds only the newest such set. Message counts never decrease,
so if two workflow snapshots contain the node, taking the newer node of the two for
every instance gives a workflow snapshot again (each consistency rule compares a
sender's count with a receiver's count that may be equal or one higher, and both
sides only grow). Consistent sets are therefore closed under that per-instance
maximum, the newest one is unique, and for such max-closed constraints arc
consistency is enough: prune every candidate that lacks a consistent node of some
peer until nothing changes, then the newest remaining node of every instance is the
answer. That is polynomial: O(edges) work per pruning pass.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from snapreg.rules.consistency import MessageCounts, Rule, rules_hold
from snapreg.rules.metadata import SnapshotMetadata
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
            newest = _newest_workflow_snapshot(self, node)
            return [] if newest is None else [newest]
        return list(_enumerate_workflow_snapshots(self, node))

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


def _narrow_own_peers(
    graph: ActiveGraph, node: GraphNode
) -> dict[str, set[GraphNode]] | None:
    """Candidates of node's peers that are consistent with it; None if one has none."""
    domains: dict[str, set[GraphNode]] = {}
    for peer, peer_nodes in node.consistent_peers.items():
        if peer == node.instance:
            continue
        narrowed = {
            candidate for candidate in peer_nodes if candidate.locally_consistent
        }
        if not narrowed:
            return None
        domains[peer] = narrowed
    return domains


def _enumerate_workflow_snapshots(
    graph: ActiveGraph, node: GraphNode
) -> Iterator[list[GraphNode]]:
    """Depth-first search with forward checking; see the module docstring."""
    narrowed = _narrow_own_peers(graph, node)
    if narrowed is None:
        return
    search = _Search(graph, node.instance, narrowed)
    if not search.unassigned:
        yield [node]
        return
    assignment: dict[str, GraphNode] = {node.instance: node}
    stack: list[_Frame] = [search.choose()]
    while stack:
        frame = stack[-1]
        search.undo(frame)
        assignment.pop(frame.instance, None)
        candidate = frame.next_candidate()
        if candidate is None:
            stack.pop()
            search.release(frame.instance)
            continue
        if not search.narrow(frame, candidate):
            continue
        assignment[frame.instance] = candidate
        if search.unassigned:
            stack.append(search.choose())
        else:
            yield list(assignment.values())


class _Frame:
    """One level of the search: an instance and the candidates still to try."""

    __slots__ = ("instance", "candidates", "position", "changes")

    def __init__(self, instance: str, candidates: list[GraphNode]) -> None:
        self.instance = instance
        self.candidates = candidates
        self.position = 0
        self.changes: list[tuple[str, set[GraphNode] | None]] = []

    def next_candidate(self) -> GraphNode | None:
        if self.position == len(self.candidates):
            return None
        candidate = self.candidates[self.position]
        self.position += 1
        return candidate


class _Search:
    """Candidate sets, built lazily, and a heap to find the most constrained one."""

    def __init__(
        self, graph: ActiveGraph, fixed: str, domains: dict[str, set[GraphNode]]
    ) -> None:
        self.graph = graph
        self.domains = domains
        self.unassigned = set(graph.nodes)
        self.unassigned.discard(fixed)
        self._tiebreak = itertools.count()
        self.heap = [(self.size(instance), 0, instance) for instance in self.unassigned]
        heapq.heapify(self.heap)

    def size(self, instance: str) -> int:
        domain = self.domains.get(instance)
        return self.graph.candidate_count[instance] if domain is None else len(domain)

    def domain(self, instance: str) -> set[GraphNode]:
        domain = self.domains.get(instance)
        if domain is None:
            domain = self.domains[instance] = self.graph.candidates(instance)
        return domain

    def choose(self) -> _Frame:
        """Take the unassigned instance with the fewest candidates."""
        while True:
            size, _, instance = heapq.heappop(self.heap)
            if instance in self.unassigned and size == self.size(instance):
                break
        self.unassigned.remove(instance)
        candidates = sorted(self.domain(instance), key=lambda node: node.num)
        return _Frame(instance, candidates)

    def release(self, instance: str) -> None:
        """Give an instance back to the unassigned ones (on backtracking)."""
        self.unassigned.add(instance)
        heapq.heappush(self.heap, (self.size(instance), next(self._tiebreak), instance))

    def narrow(self, frame: _Frame, candidate: GraphNode) -> bool:
        """Restrict unassigned peers to the candidate's consistent nodes.

        Returns:
            False if some peer is left without candidates.
        """
        for peer, peer_nodes in candidate.consistent_peers.items():
            if peer not in self.unassigned:
                continue
            previous = self.domains.get(peer)
            narrowed = self.domain(peer).intersection(peer_nodes)
            frame.changes.append((peer, previous))
            self.domains[peer] = narrowed
            if not narrowed:
                return False
            heapq.heappush(self.heap, (len(narrowed), next(self._tiebreak), peer))
        return True

    def undo(self, frame: _Frame) -> None:
        for peer, previous in reversed(frame.changes):
            if previous is None:
                self.domains.pop(peer, None)
            else:
                self.domains[peer] = previous
            if peer in self.unassigned:
                heapq.heappush(self.heap, (self.size(peer), next(self._tiebreak), peer))
        frame.changes.clear()


def _newest_workflow_snapshot(
    graph: ActiveGraph, node: GraphNode
) -> list[GraphNode] | None:
    """Arc consistency, then the newest node per instance; see the module docstring."""
    narrowed = _narrow_own_peers(graph, node)
    if narrowed is None:
        return None
    domains: dict[str, set[GraphNode]] = {
        instance: narrowed.get(instance) or graph.candidates(instance)
        for instance in graph.nodes
        if instance != node.instance
    }
    domains[node.instance] = {node}
    if any(not domain for domain in domains.values()):
        return None
    # Every candidate must keep a consistent node in each peer's domain; removing
    # one may take the support of its peers' candidates away, so re-check those.
    queue = list(domains)
    queued = set(queue)
    while queue:
        instance = queue.pop()
        queued.discard(instance)
        domain = domains[instance]
        unsupported = [
            candidate
            for candidate in domain
            if any(
                not domains[peer].intersection(candidate.consistent_peers.get(peer, ()))
                for peer in candidate.peers
            )
        ]
        if not unsupported:
            continue
        domain.difference_update(unsupported)
        if not domain:
            return None
        for peer in graph.topology.peers(instance):
            if peer not in queued:
                queue.append(peer)
                queued.add(peer)
    return [
        max(domain, key=lambda candidate: candidate.num) for domain in domains.values()
    ]
