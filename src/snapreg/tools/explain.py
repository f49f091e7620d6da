"""Why the newest workflow snapshot is as old as it is: ``snapreg explain``.

A workflow snapshot needs one node per instance with every pair of peers
consistent. When the newest one lags behind, the cause is visible on the newest
node of each instance: some peer has no active node consistent with it, because
on some conduit, port and slot the message counts of the two disagree. This module
finds those disagreements, slot by slot, with the same rules the registry applies
(:mod:`snapreg.rules.consistency`: the connections of :meth:`Topology.connections`,
compiled by :func:`compile_rules`), and says which rule failed:

* ``strong``: the receiver has received fewer messages than the sender has sent;
  only equal counts, or the receiver one ahead, are consistent;
* ``weak``: the receiver is more than one message ahead of the sender;
* ``restart``: the receiver is exactly one ahead, which is consistent only when the
  sender resumes from a snapshot and sends that message again, but the sender's
  node is its restart node (it starts from scratch).

The registry compared each new node with the older active nodes of its peers, the
new node's side first (the rules are not symmetric for restart nodes), so the
explanation compares them the same way round.

How an explanation is printed, in words or as JSON, is
:mod:`snapreg.tools.explain_output`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from snapreg.rules.consistency import MessageCounts, calc_consistency, compile_rules
from snapreg.rules.instances import split_instance
from snapreg.rules.topology import Topology
from snapreg.tools.run_graph import RecordedNode, RunGraph, load_run_graph

FailedRule = Literal["strong", "weak", "restart"]

#: How many active nodes of a peer without a consistent one are shown, newest first.
DEFAULT_CANDIDATES = 3


@dataclass(frozen=True)
class SlotMismatch:
    """One slot of one conduit on which two nodes' message counts disagree.

    Attributes:
        conduit: The conduit between the components, ``sender.port ->
            receiver.port``.
        sender: The sending instance.
        sending_port: Its port.
        sending_slot: The slot of that port whose count was compared.
        sent: The sender's count: messages it had sent on that slot.
        receiver: The receiving instance.
        receiving_port: Its port.
        receiving_slot: The slot of that port whose count was compared.
        received: The receiver's count: messages it had received on that slot.
        rule: The rule that failed: ``strong``, ``weak`` or ``restart``.
    """

    conduit: str
    sender: str
    sending_port: str
    sending_slot: int
    sent: int
    receiver: str
    receiving_port: str
    receiving_slot: int
    received: int
    rule: FailedRule

    def in_words(self) -> str:
        """One sentence saying what disagrees and which rule failed."""
        sent = (
            f"{self.sender} sent {self.sent} on {self.sending_port}"
            f"[{self.sending_slot}]"
        )
        received = (
            f"{self.receiver} received {self.received} on {self.receiving_port}"
            f"[{self.receiving_slot}]"
        )
        if self.rule == "strong":
            why = "the receiver is behind (strong rule: counts must be equal)"
        elif self.rule == "weak":
            why = (
                f"the receiver is {self.received - self.sent} ahead (weak rule: at"
                " most one ahead)"
            )
        else:
            why = (
                "the receiver is one ahead, which needs the sender to resend after"
                " a resume, but the sender's node is its restart node"
            )
        return f"{self.conduit}: {sent}, {received}: {why}"

    def as_json(self) -> dict[str, Any]:
        """The mismatch as a JSON object."""
        return {
            "conduit": self.conduit,
            "sender": self.sender,
            "sending_port": self.sending_port,
            "sending_slot": self.sending_slot,
            "sent": self.sent,
            "receiver": self.receiver,
            "receiving_port": self.receiving_port,
            "receiving_slot": self.receiving_slot,
            "received": self.received,
            "rule": self.rule,
        }


def count_mismatches(
    topology: Topology,
    own_instance: str,
    own_counts: MessageCounts,
    peer_instance: str,
    peer_counts: MessageCounts,
    peer_is_restart: bool,
) -> list[SlotMismatch]:
    """Every slot on which two nodes of peer instances disagree.

    Arguments mean what they mean for
    :func:`snapreg.rules.consistency.counts_consistent`, which is True exactly when
    this returns no mismatches.

    Args:
        topology: The model.
        own_instance: The instance of the first node (the newer one, as the
            registry compares them).
        own_counts: Its port message counts.
        peer_instance: The instance of the second node.
        peer_counts: Its port message counts.
        peer_is_restart: Whether the second node is a restart node.
    """
    own_component = split_instance(own_instance)[0]
    peer_component = split_instance(peer_instance)[0]
    mismatches: list[SlotMismatch] = []
    connections = topology.connections(own_instance, peer_instance)
    rules = compile_rules(own_instance, peer_instance, connections)
    for rule in rules:
        own = list(own_counts.get(rule.own_port, ()))
        peer = list(peer_counts.get(rule.peer_port, ()))
        if rule.own_slot is None or rule.peer_slot is None:
            slot_pairs = [(slot, slot) for slot in range(max(len(own), len(peer)))]
        else:
            slot_pairs = [(rule.own_slot, rule.peer_slot)]
        for own_slot, peer_slot in slot_pairs:
            own_count = own[own_slot] if own_slot < len(own) else 0
            peer_count = peer[peer_slot] if peer_slot < len(peer) else 0
            if calc_consistency(
                own_count, peer_count, rule.is_sending, peer_is_restart
            ):
                continue
            if rule.is_sending:
                sender, sending_port, sending_slot, sent = (
                    own_instance,
                    rule.own_port,
                    own_slot,
                    own_count,
                )
                receiver, receiving_port, receiving_slot, received = (
                    peer_instance,
                    rule.peer_port,
                    peer_slot,
                    peer_count,
                )
                conduit = (
                    f"{own_component}.{rule.own_port} ->"
                    f" {peer_component}.{rule.peer_port}"
                )
                sender_is_restart = False  # the rule checks only the peer's side
            else:
                sender, sending_port, sending_slot, sent = (
                    peer_instance,
                    rule.peer_port,
                    peer_slot,
                    peer_count,
                )
                receiver, receiving_port, receiving_slot, received = (
                    own_instance,
                    rule.own_port,
                    own_slot,
                    own_count,
                )
                conduit = (
                    f"{peer_component}.{rule.peer_port} ->"
                    f" {own_component}.{rule.own_port}"
                )
                sender_is_restart = peer_is_restart
            failed: FailedRule
            if received < sent:
                failed = "strong"
            elif received == sent + 1 and sender_is_restart:
                failed = "restart"
            else:
                failed = "weak"
            mismatches.append(
                SlotMismatch(
                    conduit,
                    sender,
                    sending_port,
                    sending_slot,
                    sent,
                    receiver,
                    receiving_port,
                    receiving_slot,
                    received,
                    failed,
                )
            )
    return mismatches


def node_mismatches(
    topology: Topology, first: RecordedNode, second: RecordedNode
) -> list[SlotMismatch]:
    """The mismatches between two nodes of peer instances, compared as the
    registry compared them: the later registered node's side first."""
    newer, older = (first, second) if first.id > second.id else (second, first)
    return count_mismatches(
        topology,
        newer.instance,
        newer.port_message_counts,
        older.instance,
        older.port_message_counts,
        older.is_restart,
    )


@dataclass(frozen=True)
class CheckedNode:
    """An active node of a peer, and why it is not consistent.

    Attributes:
        num: The peer node's num.
        is_restart: Whether it is the peer's restart node.
        mismatches: Every slot on which its counts disagree.
    """

    num: int
    is_restart: bool
    mismatches: tuple[SlotMismatch, ...]


@dataclass(frozen=True)
class PeerExplanation:
    """How the newest node of an instance stands with one peer.

    Attributes:
        peer: The peer instance.
        consistent_with: Nums of the peer's active nodes consistent with the node.
        checked: When there are none: the peer's newest active nodes, newest
            first, with the mismatches that rule each out.
        not_shown: How many more active nodes of the peer were left out.
    """

    peer: str
    consistent_with: tuple[int, ...]
    checked: tuple[CheckedNode, ...]
    not_shown: int


@dataclass(frozen=True)
class InstanceExplanation:
    """The newest node of one instance and what keeps it out of a workflow snapshot.

    Attributes:
        instance: The instance.
        node: Its newest node in the run.
        workflow_snapshot: The newest workflow snapshot of the run that holds the
            node, if any.
        snapshots_since: How many snapshots the instance took after its member
            of the run's newest workflow snapshot; None when the run has none.
        peers: Every peer, by name.
    """

    instance: str
    node: RecordedNode
    workflow_snapshot: int | None
    snapshots_since: int | None
    peers: tuple[PeerExplanation, ...]

    @property
    def locally_consistent(self) -> bool:
        """Whether every peer has an active node consistent with the node."""
        return all(peer.consistent_with for peer in self.peers)

    @property
    def blocking_peers(self) -> list[PeerExplanation]:
        """The peers without any active node consistent with the node."""
        return [peer for peer in self.peers if not peer.consistent_with]


@dataclass(frozen=True)
class Explanation:
    """Why a run's newest workflow snapshot is as old as it is.

    Attributes:
        campaign: The campaign.
        run: The run explained.
        runs: How many runs the campaign has.
        newest_in_campaign: The campaign's newest workflow snapshot (id, run).
        newest_in_run: The run's newest workflow snapshot: its id and member nums
            by instance; None when the run has none.
        instances: Every instance's newest node, in model order.
    """

    campaign: str
    run: int
    runs: int
    newest_in_campaign: tuple[int, int] | None
    newest_in_run: tuple[int, dict[str, int]] | None
    instances: tuple[InstanceExplanation, ...]

    @property
    def up_to_date(self) -> bool:
        """Whether every instance's newest node is in the run's newest workflow
        snapshot: then nothing newer can exist."""
        if self.newest_in_run is None:
            return False
        members = self.newest_in_run[1]
        return all(
            members.get(item.instance) == item.node.num for item in self.instances
        )

    @property
    def stalled(self) -> list[InstanceExplanation]:
        """Instances that took no snapshot since the run's newest workflow
        snapshot while others did: each newer one would need one of theirs."""
        if self.newest_in_run is None:
            return []
        if not any(item.snapshots_since for item in self.instances):
            return []
        return [item for item in self.instances if item.snapshots_since == 0]


def explain(graph: RunGraph, *, candidates: int = DEFAULT_CANDIDATES) -> Explanation:
    """Explain a run from its active graph (see :func:`load_run_graph`).

    Args:
        graph: The run, at least its active nodes and the pairs between them.
        candidates: For a peer without a consistent node, how many of its active
            nodes to check and show, newest first; 0 for all.
    """
    topology = graph.topology
    linked = graph.consistent_peers()
    newest_snapshot = graph.workflow_snapshots[-1] if graph.workflow_snapshots else None
    members: dict[str, int] = {}
    if newest_snapshot is not None:
        for node_id in newest_snapshot.member_ids:
            member = graph.nodes.get(node_id)
            if member is not None:
                members[member.instance] = member.num
    holding: dict[int, int] = {}
    for snapshot in graph.workflow_snapshots:
        for node_id in snapshot.member_ids:
            holding[node_id] = snapshot.id
    explained: list[InstanceExplanation] = []
    for instance in graph.instances:
        nodes = graph.nodes_of(instance)
        if not nodes:
            continue  # a run recorded without its restart nodes: nothing to say
        newest = nodes[-1]
        since = None
        if instance in members:
            since = sum(1 for node in nodes if node.num > members[instance])
        peers = []
        for peer in sorted(topology.peers(instance)):
            consistent = tuple(
                node.num for node in linked.get(newest.id, {}).get(peer, [])
            )
            checked: list[CheckedNode] = []
            not_shown = 0
            if not consistent:
                peer_nodes = [node for node in graph.nodes_of(peer) if node.active]
                peer_nodes.reverse()
                if candidates:
                    not_shown = max(0, len(peer_nodes) - candidates)
                    peer_nodes = peer_nodes[:candidates]
                checked = [
                    CheckedNode(
                        node.num,
                        node.is_restart,
                        tuple(node_mismatches(topology, newest, node)),
                    )
                    for node in peer_nodes
                ]
            peers.append(PeerExplanation(peer, consistent, tuple(checked), not_shown))
        explained.append(
            InstanceExplanation(
                instance, newest, holding.get(newest.id), since, tuple(peers)
            )
        )
    return Explanation(
        campaign=graph.campaign,
        run=graph.run,
        runs=graph.runs,
        newest_in_campaign=graph.newest_in_campaign,
        newest_in_run=None
        if newest_snapshot is None
        else (newest_snapshot.id, members),
        instances=tuple(explained),
    )


def explain_campaign(
    database_url: str,
    campaign: str | None,
    *,
    run: int | None = None,
    candidates: int = DEFAULT_CANDIDATES,
) -> Explanation:
    """Explain a campaign's run (default: its newest) from the database.

    Raises:
        NotFoundError: no such database, campaign or run.
        SchemaVersionError: the schema does not match this snapreg.
        StorageUnavailableError: the database cannot be read.
    """
    graph = load_run_graph(database_url, campaign, run=run, active_only=True)
    return explain(graph, candidates=candidates)


__all__ = [
    "CheckedNode",
    "Explanation",
    "InstanceExplanation",
    "PeerExplanation",
    "SlotMismatch",
    "count_mismatches",
    "explain",
    "explain_campaign",
    "node_mismatches",
]
