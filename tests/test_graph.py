"""The searches over the active graph, against brute force.

``policy="all"`` must find exactly the consistent sets a brute-force enumeration of
every combination finds; ``policy="latest"`` must find one of them that is newer or
equal, instance by instance, than every other (so it is unique and maximal).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

import snapreg.rules.graph as graph_module
from snapreg.rules.consistency import rules_hold
from snapreg.rules.graph import ActiveGraph, GraphNode, Policy
from snapreg.rules.metadata import coerce_metadata, restart_metadata
from snapreg.rules.topology import Topology
from support.oracle import run_oracle, workflow_snapshot_count
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
    """Replay a stream under a policy, checking every search against brute force.

    Returns:
        How many workflow snapshots brute force found over the whole stream (under
        ``"latest"``: how many there were to choose the newest from).
    """
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


@pytest.mark.muscle3
@pytest.mark.parametrize("seed", range(6))
def test_latest_is_unique_and_maximal_with_many_candidates(seed: int) -> None:
    # micro intermediates give several candidates per instance: many combinations
    stream = macro_micro(seed, num_micro=4, num_steps=3, intermediates_per_reuse=2)
    for replayed in (stream, near_miss(stream, seed)):
        # The newest set dominates every other one, so it retires what MUSCLE3's
        # "all" retires: the graph stays MUSCLE3's and so do the sets to choose from.
        assert replay(replayed, "latest") == workflow_snapshot_count(
            run_oracle(replayed)
        ), replayed.name


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


# ------------------------------------------------- bisection over a peer's nodes


def lagged(stream: Stream, seed: int) -> Stream:
    """The same registrations in another valid order: instances fall behind.

    Each instance keeps its own order; at every step a random instance, favouring
    one, goes next. Instances that run ahead pile up active nodes, the case that
    bisection over a peer's nodes is for.
    """
    rng = random.Random(seed)
    queues: dict[str, list[Any]] = {}
    for registration in stream.registrations:
        queues.setdefault(registration[0], []).append(registration)
    favourite = rng.choice(sorted(queues))
    order = []
    while queues:
        names = sorted(queues)
        name = favourite if favourite in queues and rng.random() < 0.6 else None
        name = name or rng.choice(names)
        order.append(queues[name].pop(0))
        if not queues[name]:
            del queues[name]
    return Stream(stream.name + f"~lagged{seed}", stream.config, order)


def edges_and_snapshots(
    stream: Stream, policy: Policy
) -> tuple[list[set[int]], list[list[frozenset[tuple[str, int]]]]]:
    """Every node's consistent peers (by id) and every registration's findings."""
    topology = Topology.from_configuration(stream.config)
    graph = ActiveGraph(topology)
    ids = itertools.count(1)
    nodes = []
    for instance in topology.instances:
        graph.add(graph.new_node(next(ids), instance, restart_metadata(), True))
    findings = []
    for instance, metadata in stream.registrations:
        node = graph.new_node(next(ids), instance, coerce_metadata(metadata), False)
        linked = graph.add(node)
        nodes.append({peer.id for peer in linked})
        found = graph.find_workflow_snapshots(node, policy)
        findings.append(
            [frozenset((m.instance, m.num) for m in members) for members in found]
        )
        if found:
            graph.retire(graph.plan_retirement(found))
    return nodes, findings


@pytest.mark.parametrize("policy", ["all", "latest"])
@pytest.mark.parametrize("seed", range(8))
def test_bisection_finds_what_checking_every_node_finds(
    seed: int, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = macro_micro(
        seed,
        num_micro=3,
        num_steps=6,
        micro_intermediate=False,
        macro_intermediate=True,
    )
    stream = lagged(base if seed % 2 else near_miss(base, seed), seed)
    bisected = 0
    within_reach = graph_module.ActiveGraph._within_reach

    def counting(self: ActiveGraph, node: GraphNode, peer: str, rules: Any) -> Any:
        nonlocal bisected
        found = within_reach(self, node, peer, rules)
        bisected += found is not self.nodes[peer]
        return found

    monkeypatch.setattr(graph_module, "_BISECT_FROM", 10**9)
    expected = edges_and_snapshots(stream, policy)
    monkeypatch.setattr(graph_module, "_BISECT_FROM", 1)
    monkeypatch.setattr(graph_module.ActiveGraph, "_within_reach", counting)
    assert edges_and_snapshots(stream, policy) == expected
    assert bisected > len(stream.registrations) // 2
    assert any(expected[1])


def test_counts_that_go_down_are_searched_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # never sent by a registry (counts only grow), but a graph must not rely on it
    stream = macro_micro(5, num_micro=1, num_steps=8, micro_intermediate=False)
    topology = Topology.from_configuration(stream.config)
    rules = topology.rules("macro", "micro[0]")
    monkeypatch.setattr(graph_module, "_BISECT_FROM", 1)
    micro = [
        coerce_metadata(metadata)
        for instance, metadata in stream.registrations
        if instance != "macro"
    ]
    macro = [
        coerce_metadata(metadata)
        for instance, metadata in stream.registrations
        if instance == "macro"
    ]

    def check_macro(graph: ActiveGraph, metadata: Any) -> None:
        node = graph.new_node(next(ids), "macro", metadata, False)
        linked = graph.add(node)
        assert linked == [
            peer
            for peer in graph.nodes["micro[0]"]
            if rules_hold(
                node.metadata.port_message_counts,
                peer.metadata.port_message_counts,
                peer.is_restart,
                rules,
            )
        ]

    ids = itertools.count(1)
    # descending from the start
    graph = ActiveGraph(topology)
    for metadata in reversed(micro):
        graph.add(graph.new_node(next(ids), "micro[0]", metadata, False))
    for metadata in macro:
        check_macro(graph, metadata)
    # ascending at first (bisection in use), then a lower one arrives
    graph = ActiveGraph(topology)
    for metadata in micro[1:]:
        graph.add(graph.new_node(next(ids), "micro[0]", metadata, False))
    check_macro(graph, macro[0])
    graph.add(graph.new_node(next(ids), "micro[0]", micro[0], False))
    for metadata in macro:
        check_macro(graph, metadata)
