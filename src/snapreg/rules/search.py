"""The workflow snapshot searches over the active graph: every one, or the newest.

Two searches find the workflow snapshots that contain a new node (one active,
locally consistent node per instance, every pair of peers an edge) in an
:class:`~snapreg.rules.graph.ActiveGraph`:

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

import heapq
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapreg.rules.graph import ActiveGraph, GraphNode


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


def enumerate_workflow_snapshots(
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


def newest_workflow_snapshot(
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
