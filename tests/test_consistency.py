"""The pure consistency rules: the seed's truth tables, topology, and MUSCLE3 parity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libmuscle.manager import snapshot_registry as muscle3_registry
from libmuscle.manager.topology_store import TopologyStore as MUSCLE3TopologyStore
from ymmsl.v0_2 import Component, Conduit, Configuration, Model, Ports, Reference

from snapreg import (
    ConnectionInfo,
    Topology,
    TopologyStore,
    UnknownInstanceError,
    calc_consistency,
    calc_consistency_list,
    safe_get,
)
from snapreg.rules.instances import split_instance
from support.streams import all_streams


def test_safe_get() -> None:
    assert safe_get([], 0, 1) == 1
    assert safe_get([3], 0, 1) == 3
    assert safe_get([3], 1, 5) == 5
    for index in range(10):
        assert safe_get([3, 4, 5], index, -1) == (-1 if index >= 3 else index + 3)


def test_calc_consistency() -> None:
    sent = 3
    for received in [2, 3, 4, 5]:
        expected = received in [3, 4]
        assert calc_consistency(sent, received, True, False) is expected
        assert calc_consistency(received, sent, False, False) is expected
    received = 10
    for sent in [8, 9, 10, 11]:
        expected = sent in [9, 10]
        assert calc_consistency(sent, received, True, False) is expected
        assert calc_consistency(received, sent, False, False) is expected


def test_calc_consistency_with_restart() -> None:
    assert calc_consistency(0, 0, True, True)
    assert calc_consistency(0, 0, False, True)
    assert not calc_consistency(1, 0, True, True)
    assert not calc_consistency(1, 0, True, False)
    assert calc_consistency(1, 0, False, False)
    # the sender restarts from scratch: it never sends that message again
    assert not calc_consistency(1, 0, False, True)


def test_calc_consistency_list() -> None:
    sent = [3, 3]
    for received in [[2, 3], [3, 2], [3, 5], [], [4, 4, 0, 0, 2]]:
        assert not calc_consistency_list(sent, received, True, False)
        assert not calc_consistency_list(received, sent, False, False)
    for received in [
        [3, 3],
        [3, 4],
        [4, 3],
        [4, 4],
        [3, 3, 1],
        [4, 4, 0, 0, 0, 1, 0, 1],
    ]:
        assert calc_consistency_list(sent, received, True, False)
        assert calc_consistency_list(received, sent, False, False)


def test_property_tests_are_not_timed() -> None:
    # the suite's hypothesis profile (conftest.py): examples have no deadline
    assert settings.default.deadline is None


counts = st.integers(min_value=0, max_value=6)


@pytest.mark.muscle3
@given(counts, counts, st.booleans(), st.booleans())
def test_calc_consistency_equals_muscle3(
    first: int, second: int, first_is_sent: bool, second_is_restart: bool
) -> None:
    assert calc_consistency(
        first, second, first_is_sent, second_is_restart
    ) is muscle3_registry.calc_consistency(
        first, second, first_is_sent, second_is_restart
    )


@pytest.mark.muscle3
@given(
    st.lists(counts, max_size=5),
    st.lists(counts, max_size=5),
    st.booleans(),
    st.booleans(),
)
def test_calc_consistency_list_equals_muscle3(
    first: list[int], second: list[int], first_is_sent: bool, second_is_restart: bool
) -> None:
    assert calc_consistency_list(
        first, second, first_is_sent, second_is_restart
    ) is muscle3_registry.calc_consistency_list(
        first, second, first_is_sent, second_is_restart
    )


@pytest.fixture
def uq() -> Configuration:
    """An uncertainty quantification: qmc -> rr -> macro[5] <-> micro[5]."""
    components = [
        Component("macro", Ports(), "", "macro_impl", multiplicity=[5]),
        Component("micro", Ports(), "", "micro_impl", multiplicity=[5]),
        Component("qmc", Ports(), "", "qmc_impl"),
        Component("rr", Ports(), "", "rr_impl"),
    ]
    conduits = [
        Conduit("macro.o_i", "micro.f_i"),
        Conduit("micro.o_f", "macro.s"),
        Conduit("qmc.parameters_out", "rr.front_in"),
        Conduit("rr.front_out", "qmc.states_in"),
        Conduit("rr.back_out", "macro.muscle_settings_in"),
        Conduit("macro.final_state_out", "rr.back_in"),
    ]
    return Configuration(models=[Model("uq", components=components, conduits=conduits)])


def test_peers(uq: Configuration) -> None:
    topology = Topology.from_configuration(uq)
    macros = {f"macro[{index}]" for index in range(5)}
    assert set(topology.instances) == {"qmc", "rr"} | macros | {
        f"micro[{index}]" for index in range(5)
    }
    assert topology.peers("qmc") == {"rr"}
    assert topology.peers("rr") == {"qmc"} | macros
    for index in range(5):
        assert topology.peers(f"macro[{index}]") == {"rr", f"micro[{index}]"}
        assert topology.peers(f"micro[{index}]") == {f"macro[{index}]"}


def test_connections(uq: Configuration) -> None:
    topology = Topology.from_configuration(uq)
    assert not topology.connections("qmc", "macro[1]")
    assert not topology.connections("micro[0]", "rr")
    rr_qmc = topology.connections("rr", "qmc")
    assert {(c.own_port, c.peer_port) for c in rr_qmc} == {
        ("front_out", "states_in"),
        ("front_in", "parameters_out"),
    }
    for connection in rr_qmc:
        sending = bool(connection.info & ConnectionInfo.SELF_IS_SENDING)
        assert sending is (connection.own_port == "front_out")
        assert not connection.info & (
            ConnectionInfo.SELF_IS_VECTOR | ConnectionInfo.PEER_IS_VECTOR
        )
    for connection in topology.connections("macro[0]", "rr"):
        assert connection.info & ConnectionInfo.PEER_IS_VECTOR
    for connection in topology.connections("rr", "macro[1]"):
        assert connection.info & ConnectionInfo.SELF_IS_VECTOR


@pytest.mark.muscle3
@pytest.mark.parametrize("stream", all_streams(3), ids=lambda stream: stream.name)
def test_peers_equal_muscle3_topology_store(stream: object) -> None:
    config = stream.config  # type: ignore[attr-defined]
    ours = Topology.from_configuration(config)
    theirs = MUSCLE3TopologyStore(config)
    for instance in ours.instances:
        assert ours.peers(instance) == {
            str(peer) for peer in theirs.get_peer_instances(Reference(instance))
        }


def test_unknown_instances_are_named(uq: Configuration) -> None:
    topology = Topology.from_configuration(uq)
    with pytest.raises(UnknownInstanceError, match="component 'nope' is not in model"):
        topology.check_instance("nope")
    with pytest.raises(UnknownInstanceError, match=r"multiplicity \[5\]"):
        topology.check_instance("macro[7]")
    with pytest.raises(UnknownInstanceError, match="not an instance name"):
        topology.check_instance("macro[x]")
    with pytest.raises(UnknownInstanceError):
        topology.check_instance("")


def test_split_instance() -> None:
    assert split_instance("micro[2][5]") == ("micro", (2, 5))
    assert split_instance("macro") == ("macro", ())
    with pytest.raises(UnknownInstanceError):
        split_instance("micro[2]x")


@pytest.mark.muscle3
def test_topology_store_answers_like_muscle3s(uq: Configuration) -> None:
    ours = TopologyStore(uq)
    theirs = MUSCLE3TopologyStore(uq)
    for instance in Topology.from_configuration(uq).instances:
        reference = Reference(instance)
        assert sorted(map(str, ours.get_peer_instances(reference))) == sorted(
            map(str, theirs.get_peer_instances(reference))
        )
    with pytest.raises(UnknownInstanceError):
        ours.get_peer_instances("nope")


@pytest.mark.muscle3
def test_snapshot_nodes_check_consistency_as_muscle3s_do(uq: Configuration) -> None:
    from libmuscle.manager.snapshot_registry import SnapshotNode as Muscle3Node
    from libmuscle.manager.snapshot_registry import SnapshotRegistry as Muscle3Registry
    from libmuscle.snapshot import SnapshotMetadata as Muscle3Metadata

    from snapreg import SnapshotMetadata, SnapshotNode

    muscle3 = Muscle3Registry(uq, None, MUSCLE3TopologyStore(uq))
    topology = Topology.from_configuration(uq)
    macro, rr = Reference("macro[1]"), Reference("rr")
    cases = [  # rr sends back_out[1] to macro[1] and receives final_state_out
        (
            {"back_out": [0, 3], "back_in": [0, 2]},
            {"muscle_settings_in": [3], "final_state_out": [2]},
        ),
        (
            {"back_out": [0, 3], "back_in": [0, 2]},
            {"muscle_settings_in": [4], "final_state_out": [2]},
        ),
        (
            {"back_out": [0, 3], "back_in": [0, 2]},
            {"muscle_settings_in": [3], "final_state_out": [3]},
        ),
        (
            {"back_out": [0, 3], "back_in": [0, 2]},
            {"muscle_settings_in": [5], "final_state_out": [2]},
        ),
        ({}, {"muscle_settings_in": [1], "final_state_out": [0]}),
    ]
    outcomes = set()
    for rr_counts, macro_counts in cases:

        def ours(counts: dict[str, list[int]], instance: Reference) -> SnapshotNode:
            metadata = SnapshotMetadata(["t"], 1.0, 1.0, None, counts, False, "f")
            return SnapshotNode(2, instance, metadata, frozenset())

        def theirs(counts: dict[str, list[int]], instance: Reference) -> Muscle3Node:
            metadata = Muscle3Metadata(["t"], 1.0, 1.0, None, counts, False, "f")
            return Muscle3Node(2, instance, metadata, frozenset())

        expected = theirs(rr_counts, rr).do_consistency_check(
            theirs(macro_counts, macro), muscle3._get_connections(rr, macro)
        )
        mine = ours(rr_counts, rr)
        peer = ours(macro_counts, macro)
        # both MUSCLE3's connection triples and snapreg's are accepted
        assert (
            mine.do_consistency_check(peer, muscle3._get_connections(rr, macro))
            is expected
        )
        assert (
            ours(rr_counts, rr).do_consistency_check(
                ours(macro_counts, macro), topology.connections("rr", "macro[1]")
            )
            is expected
        )
        assert (peer in mine.consistent_peers.get(macro, [])) is expected
        assert (mine in peer.consistent_peers.get(rr, [])) is expected
        outcomes.add(expected)
    assert outcomes == {True, False}
