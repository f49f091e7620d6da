"""`snapreg explain`: campaigns built by hand, where the answer is known.

The model is the example's: ``macro`` sends on the vector port ``state_out`` to
``micro[j].initial_state`` and gathers ``micro[j].final_state`` on the vector port
``state_in``. Counts are chosen so that exactly known slots disagree.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import ymmsl

from snapreg import SnapshotRegistry
from snapreg.rules.consistency import counts_consistent
from snapreg.rules.topology import Topology
from snapreg.tools.explain import count_mismatches, explain_campaign
from snapreg.tools.run_graph import load_run_graph
from support.command_line import invoke
from support.models import MACRO_MICRO_YMMSL
from support.streams import all_streams, macro_micro

MACRO_MICRO = MACRO_MICRO_YMMSL

CHAIN = """
ymmsl_version: v0.2
models:
  chain:
    components:
      first:
        ports: {o_i: out}
        implementation: first
        description: sends
      second:
        ports: {f_init: in}
        implementation: second
        description: receives
    conduits:
      first.out: second.in
"""


def metadata(counts: dict[str, list[int]], time: float, final: bool) -> dict[str, Any]:
    return {
        "triggers": [f"simulation_time >= {time}"],
        "wallclock_time": time,
        "timestamp": time,
        "next_timestamp": None,
        "port_message_counts": counts,
        "is_final_snapshot": final,
        "snapshot_filename": f"/nowhere/{time}.pack",
    }


def macro(sent: int, received: int, time: float) -> dict[str, Any]:
    counts = {"state_out": [sent, sent], "state_in": [received, received]}
    return metadata(counts, time, False)


def micro(received: int, sent: int, time: float) -> dict[str, Any]:
    counts = {"initial_state": [received], "final_state": [sent]}
    return metadata(counts, time, True)


@pytest.fixture
def stalled_campaign(persistent_database_url: str, tmp_path: Path) -> str:
    """One workflow snapshot at t=1; then macro and micro[0] move on to t=2, and
    micro[1] jumps ahead to counts that fit no macro snapshot."""
    registry = SnapshotRegistry(
        ymmsl.load(MACRO_MICRO),
        tmp_path,
        database_url=persistent_database_url,
        campaign="stalled",
    )
    registry.add_snapshot("macro", macro(1, 1, 1.0))  # macro #2
    registry.add_snapshot("micro[0]", micro(1, 1, 1.1))  # micro[0] #2
    assert len(registry.add_snapshot("micro[1]", micro(1, 1, 1.2))) == 1
    registry.add_snapshot("macro", macro(2, 2, 2.0))  # macro #3
    registry.add_snapshot("micro[0]", micro(2, 2, 2.1))  # micro[0] #3
    assert registry.add_snapshot("micro[1]", micro(4, 4, 4.2)) == []  # micro[1] #3
    registry.close()
    return persistent_database_url


def test_the_blocking_peer_conduit_slot_counts_and_rule_are_named(
    stalled_campaign: str,
) -> None:
    found = explain_campaign(stalled_campaign, "stalled")

    assert (found.run, found.newest_in_run) == (
        1,
        (1, {"macro": 2, "micro[0]": 2, "micro[1]": 2}),
    )
    assert not found.up_to_date
    by_instance = {item.instance: item for item in found.instances}
    assert {name: item.snapshots_since for name, item in by_instance.items()} == {
        "macro": 1,
        "micro[0]": 1,
        "micro[1]": 1,
    }
    newest_macro = by_instance["macro"]
    assert newest_macro.node.num == 3
    assert newest_macro.workflow_snapshot is None
    [blocking] = newest_macro.blocking_peers
    assert blocking.peer == "micro[1]"
    assert [checked.num for checked in blocking.checked] == [3, 2]
    newer, older = blocking.checked
    assert [
        (m.conduit, m.sender, m.sending_port, m.sending_slot, m.sent)
        + (m.receiver, m.receiving_port, m.receiving_slot, m.received, m.rule)
        for m in newer.mismatches
    ] == [
        ("macro.state_out -> micro.initial_state", "macro", "state_out", 1, 2)
        + ("micro[1]", "initial_state", 0, 4, "weak"),
        ("micro.final_state -> macro.state_in", "micro[1]", "final_state", 0, 4)
        + ("macro", "state_in", 1, 2, "strong"),
    ]
    # the old node is only behind on what macro sent; on the way back the
    # receiver (macro) is one ahead, which the weak rule allows
    assert [(m.sent, m.received, m.rule) for m in older.mismatches] == [
        (2, 1, "strong")
    ]
    micro_0 = by_instance["micro[0]"]
    assert micro_0.locally_consistent
    assert [(peer.peer, peer.consistent_with) for peer in micro_0.peers] == [
        ("macro", (3,))
    ]
    assert [peer.peer for peer in by_instance["micro[1]"].blocking_peers] == ["macro"]


def test_plain_words_and_json_from_the_command_line(
    stalled_campaign: str, capsys: pytest.CaptureFixture[str]
) -> None:
    words = invoke(capsys, "explain", "--db", stalled_campaign)
    as_json = invoke(capsys, "explain", "--db", stalled_campaign, "--json")
    limited = invoke(
        capsys, "explain", "--db", stalled_campaign, "--json", "--candidates", "1"
    )

    assert words.status == as_json.status == limited.status == 0
    assert "Newest workflow snapshot of this run: 1" in words.stdout
    assert "no active node of micro[1] is consistent with it:" in words.stdout
    assert (
        "macro.state_out -> micro.initial_state: macro sent 2 on state_out[1],"
        " micro[1] received 1 on initial_state[0]: the receiver is behind"
    ) in words.stdout
    assert "the receiver is 2 ahead (weak rule" in words.stdout
    report = json.loads(as_json.stdout)
    assert set(report) == {
        "campaign",
        "run",
        "runs",
        "newest_workflow_snapshot",
        "newest_workflow_snapshot_of_run",
        "up_to_date",
        "stalled",
        "instances",
    }
    assert report["newest_workflow_snapshot"] == {"id": 1, "run": 1}
    [macro_report] = [i for i in report["instances"] if i["instance"] == "macro"]
    assert macro_report["num"] == 3 and not macro_report["locally_consistent"]
    [peer] = [p for p in macro_report["peers"] if p["peer"] == "micro[1]"]
    assert peer["consistent_with"] == [] and peer["not_shown"] == 0
    assert peer["checked"][1] == {
        "num": 2,
        "is_restart": False,
        "mismatches": [
            {
                "conduit": "macro.state_out -> micro.initial_state",
                "sender": "macro",
                "sending_port": "state_out",
                "sending_slot": 1,
                "sent": 2,
                "receiver": "micro[1]",
                "receiving_port": "initial_state",
                "receiving_slot": 0,
                "received": 1,
                "rule": "strong",
            }
        ],
    }
    [limited_macro] = [
        i for i in json.loads(limited.stdout)["instances"] if i["instance"] == "macro"
    ]
    [limited_peer] = [p for p in limited_macro["peers"] if p["peer"] == "micro[1]"]
    assert [c["num"] for c in limited_peer["checked"]] == [3]
    assert limited_peer["not_shown"] == 1


def test_a_sender_that_restarts_from_scratch_fails_the_restart_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'chain.sqlite'}"
    registry = SnapshotRegistry(ymmsl.load(CHAIN), tmp_path, database_url=url)
    # second already received the first message; first has taken no snapshot
    registry.add_snapshot("second", metadata({"in": [1]}, 1.0, False))
    registry.close()

    outcome = invoke(capsys, "explain", "--db", url, "--json")

    report = json.loads(outcome.stdout)
    assert report["newest_workflow_snapshot"] is None
    by_instance = {item["instance"]: item for item in report["instances"]}
    assert by_instance["first"]["is_restart"]
    [peer] = by_instance["second"]["peers"]
    [restart] = peer["checked"]
    assert restart["is_restart"]
    assert [(m["sent"], m["received"], m["rule"]) for m in restart["mismatches"]] == [
        (0, 1, "restart")
    ]
    words = invoke(capsys, "explain", "--db", url).stdout
    assert "first: has taken no snapshot in this run yet." in words
    assert "but the sender's node is its restart node" in words


def test_an_up_to_date_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'done.sqlite'}"
    registry = SnapshotRegistry(ymmsl.load(MACRO_MICRO), tmp_path, database_url=url)
    registry.add_snapshot("macro", macro(1, 1, 1.0))
    registry.add_snapshot("micro[0]", micro(1, 1, 1.1))
    registry.add_snapshot("micro[1]", micro(1, 1, 1.2))
    registry.close()

    outcome = invoke(capsys, "explain", "--db", url)

    assert outcome.status == 0
    assert "Every instance's newest snapshot is in it" in outcome.stdout
    assert json.loads(invoke(capsys, "explain", "--db", url, "--json").stdout)[
        "up_to_date"
    ]


def test_mismatches_are_empty_exactly_when_the_registry_finds_counts_consistent() -> (
    None
):
    compared = disagreeing = 0
    for stream in all_streams(7):
        topology = Topology.from_configuration(stream.config)
        nodes = [
            (name, fields["port_message_counts"], False)
            for name, fields in stream.registrations
        ]
        nodes += [(name, {}, True) for name in topology.instances]
        for (own, own_counts, _), (peer, peer_counts, peer_restart) in itertools.islice(
            itertools.permutations(nodes, 2), 4000
        ):
            if peer not in topology.peers(own):
                continue
            consistent = counts_consistent(
                own,
                own_counts,
                peer,
                peer_counts,
                peer_restart,
                topology.connections(own, peer),
            )
            mismatches = count_mismatches(
                topology, own, own_counts, peer, peer_counts, peer_restart
            )
            assert (not mismatches) == consistent, (stream.name, own, peer)
            compared += 1
            disagreeing += bool(mismatches)
    assert compared > 1000 and 0 < disagreeing < compared


def test_the_run_graph_has_the_edges_the_registry_reports(
    persistent_database_url: str, tmp_path: Path
) -> None:
    """explain and plot read the same consistent pairs as the registry's history."""
    stream = macro_micro(23, num_micro=2, num_steps=3)
    with SnapshotRegistry(
        stream.config, tmp_path, database_url=persistent_database_url
    ) as registry:
        for instance, fields in stream.registrations:
            registry.add_snapshot(instance, fields)
        reported: dict[bool, set[tuple[int, int]]] = {}
        for active_only in (False, True):
            reported[active_only] = {
                (min(node.id, peer.id), max(node.id, peer.id))
                for instance in Topology.from_configuration(stream.config).instances
                for node in (
                    registry.snapshots(instance)
                    if active_only
                    else registry.history(instance)
                )
                for peers in node.consistent_peers.values()
                for peer in peers
                if node.id is not None and peer.id is not None
            }

    for active_only, edges in reported.items():
        graph = load_run_graph(persistent_database_url, None, active_only=active_only)
        assert graph.edges == sorted(edges)
    assert reported[True] < reported[False]  # some nodes were retired
