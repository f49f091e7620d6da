"""The searches over the active graph, against brute force.

``policy="all"`` must find exactly the consistent sets a brute-force enumeration of
every combination finds; ``policy="latest"`` must find one of them that is newer or
equal, instance by instance, than every other (so it is unique and maximal).
"""

from __future__ import annotations

import itertools

import pytest

from snapreg.consistency import Topology
from snapreg.graph import ActiveGraph, GraphNode, Policy
from snapreg.metadata import coerce_metadata, restart_metadata
from support.streams import Stream, all_streams, macro_micro, near_miss

SMALL_STREAMS = [stream for stream in all_streams(2) if len(stream.instances()) <= 6]


def brute_force(graph: ActiveGraph, node: GraphNode) -> set[frozenset[GraphNode]]:
    """Every workflow snapshot containing node, by trying every combination."""
    choices = [
        [node]
        if instance == node.instance
        else [n for n in graph.nodes[instance] if n.locally_consistent]
        for instance in graph.nodes
    ]
    found: set[frozenset[GraphNode]] = set()
    for combination in itertools.product(*choices):
        chosen = {member.instance: member for member in combination}
        if all(
            chosen[peer] in member.consistent_peers.get(peer, [])
            for member in combination
            for peer in member.peers
        ):
            found.add(frozenset(combination))
    return found


def replay(stream: Stream, policy: Policy) -> int:
    """Replay a stream under a policy, checking every search against brute force."""
    topology = Topology.from_configuration(stream.config)
    graph = ActiveGraph(topology)
    ids = itertools.count(1)
    for instance in topology.instances:
        graph.add(graph.new_node(next(ids), instance, restart_metadata(), True))
    checked = 0
    for instance, metadata in stream.registrations:
        node = graph.new_node(next(ids), instance, coerce_metadata(metadata), False)
        graph.add(node)
        found = graph.find_workflow_snapshots(node, policy)
        expected = brute_force(graph, node) if node.locally_consistent else set()
        if policy == "all":
            assert {frozenset(members) for members in found} == expected
            assert len(found) == len(expected)
        elif expected:
            (newest,) = found
            assert frozenset(newest) in expected
            newest_num = {member.instance: member.num for member in newest}
            for other in expected:
                assert all(
                    member.num <= newest_num[member.instance] for member in other
                )
        else:
            assert found == []
        checked += len(expected)
        if found:
            graph.retire(graph.plan_retirement(found))
    return checked


@pytest.mark.parametrize("policy", ["all", "latest"])
@pytest.mark.parametrize("stream", SMALL_STREAMS, ids=lambda stream: stream.name)
def test_searches_agree_with_brute_force(stream: Stream, policy: Policy) -> None:
    replay(stream, policy)


@pytest.mark.parametrize("seed", range(6))
def test_latest_is_unique_and_maximal_with_many_candidates(seed: int) -> None:
    # micro intermediates give several candidates per instance: many combinations
    stream = macro_micro(seed, num_micro=4, num_steps=3, intermediates_per_reuse=2)
    assert replay(stream, "latest") > 0
    assert replay(near_miss(stream, seed), "latest") >= 0


def test_counters_follow_the_graph() -> None:
    stream = macro_micro(3, num_micro=3, num_steps=4)
    topology = Topology.from_configuration(stream.config)
    graph = ActiveGraph(topology)
    ids = itertools.count(1)
    for instance in topology.instances:
        graph.add(graph.new_node(next(ids), instance, restart_metadata(), True))
    for instance, metadata in stream.registrations:
        node = graph.new_node(next(ids), instance, coerce_metadata(metadata), False)
        graph.add(node)
        found = graph.find_workflow_snapshots(node)
        if found:
            graph.retire(graph.plan_retirement(found))
        for name in topology.instances:
            assert graph.candidate_count[name] == len(graph.candidates(name))
        assert graph.instances_without_candidates == sum(
            1 for name in topology.instances if not graph.candidates(name)
        )
