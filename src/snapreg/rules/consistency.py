"""Pure consistency rules: when two snapshots' message counts agree.

Nothing here touches a database. :func:`calc_consistency`,
:func:`calc_consistency_list` and :func:`safe_get` keep the signatures and truth
tables of MUSCLE3's ``libmuscle.manager.snapshot_registry``; :func:`compile_rules`
turns the conduits between two instances (the :class:`Connection` objects of
:meth:`snapreg.rules.topology.Topology.connections`) into :class:`Rule` objects that
:func:`rules_hold` checks quickly on every registration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from enum import Flag, auto
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

from snapreg.rules.instances import last_index

_T = TypeVar("_T")


def safe_get(lst: Sequence[_T], index: int, default: _T) -> _T:
    """Get an item from the list, returning default when it does not exist.

    Args:
        lst: List to get the item from
        index: Which item to get, should be >= 0
        default: Value to return when hitting an IndexError
    """
    try:
        return lst[index]
    except IndexError:
        return default


def calc_consistency(
    num1: int, num2: int, first_is_sent: bool, num2_is_restart: bool
) -> bool:
    """Calculate consistency of message counts.

    Args:
        num1: message count of instance 1
        num2: message count of instance 2
        first_is_sent: True iff instance 1 is sending messages over this conduit
        num2_is_restart: True iff the snapshot of num2 is a full restart

    Returns:
        True iff the two message counts are consistent
    """
    if num1 == num2:
        return True
    if first_is_sent:
        # the receiver (2) may be one message ahead of the sender (1)
        return num2 == num1 + 1
    # the receiver (1) may be ahead, unless the sender restarts from scratch: then
    # that message would never be sent again
    return num1 == num2 + 1 and not num2_is_restart


def calc_consistency_list(
    num1: Sequence[int], num2: Sequence[int], first_is_sent: bool, num2_is_restart: bool
) -> bool:
    """Calculate consistency of message counts.

    Slots are compared pairwise; a slot missing on one side counts as zero.

    Args:
        num1: message count of instance 1
        num2: message count of instance 2
        first_is_sent: True iff instance 1 is sending messages over this conduit
        num2_is_restart: True iff the snapshot of num2 is a full restart

    Returns:
        True iff the two message counts are consistent
    """
    if first_is_sent:
        sent, received, allow_weak = num1, num2, True
    else:
        sent, received, allow_weak = num2, num1, not num2_is_restart
    for slot_sent, slot_received in itertools.zip_longest(sent, received, fillvalue=0):
        if slot_sent == slot_received:
            continue
        if allow_weak and slot_received == slot_sent + 1:
            continue
        return False
    return True


class ConnectionInfo(Flag):
    """How an instance is attached to one conduit towards a peer."""

    SELF_IS_SENDING = auto()
    SELF_IS_VECTOR = auto()
    PEER_IS_VECTOR = auto()


class Connection(NamedTuple):
    """One conduit between an instance and a peer, seen from the instance."""

    own_port: str
    peer_port: str
    info: ConnectionInfo


MessageCounts = Mapping[str, Sequence[int]]


def counts_consistent(
    own_instance: str,
    own_counts: MessageCounts,
    peer_instance: str,
    peer_counts: MessageCounts,
    peer_is_restart: bool,
    connections: Iterable[Connection] | Iterable[tuple[Any, Any, ConnectionInfo]],
) -> bool:
    """Whether two snapshots of peer instances agree on every conduit between them.

    Args:
        own_instance: The instance of the first snapshot, e.g. ``"micro[2]"``.
        own_counts: Its port message counts.
        peer_instance: The instance of the second snapshot.
        peer_counts: Its port message counts.
        peer_is_restart: Whether the second snapshot is a restart node.
        connections: Every conduit between the two, seen from ``own_instance``.

    Returns:
        True iff the two snapshots are consistent.
    """
    return rules_hold(
        own_counts,
        peer_counts,
        peer_is_restart,
        compile_rules(own_instance, peer_instance, connections),
    )


class Rule(NamedTuple):
    """One conduit between two instances, compiled for checking counts quickly.

    ``own_slot`` / ``peer_slot`` are set when one side is a vector port talking to
    one element: then a single slot of each side is compared. When both are None,
    the two count lists are compared slot by slot.
    """

    own_port: str
    peer_port: str
    is_sending: bool
    own_slot: int | None
    peer_slot: int | None


def compile_rules(
    own_instance: str,
    peer_instance: str,
    connections: Iterable[Connection] | Iterable[tuple[Any, Any, ConnectionInfo]],
) -> tuple[Rule, ...]:
    """The rules to check between two instances, from their connections."""
    rules = []
    for own_port, peer_port, info in connections:
        is_sending, self_is_vector, peer_is_vector = _decoded(info)
        if self_is_vector:
            rule = Rule(
                str(own_port), str(peer_port), is_sending, last_index(peer_instance), 0
            )
        elif peer_is_vector:
            rule = Rule(
                str(own_port), str(peer_port), is_sending, 0, last_index(own_instance)
            )
        else:
            rule = Rule(str(own_port), str(peer_port), is_sending, None, None)
        rules.append(rule)
    return tuple(rules)


@lru_cache(maxsize=64)
def _decoded(info: ConnectionInfo) -> tuple[bool, bool, bool]:
    """Whether a connection's instance sends, is a vector, talks to a vector.

    A flag's operators are Python code: deciding once per kind of connection
    keeps compiling the rules of 100,000 instance pairs cheap.
    """
    return (
        bool(info & ConnectionInfo.SELF_IS_SENDING),
        bool(info & ConnectionInfo.SELF_IS_VECTOR),
        bool(info & ConnectionInfo.PEER_IS_VECTOR),
    )


def rules_hold(
    own_counts: MessageCounts,
    peer_counts: MessageCounts,
    peer_is_restart: bool,
    rules: Iterable[Rule],
) -> bool:
    """Whether counts satisfy every compiled rule: :func:`counts_consistent`, fast."""
    for own_port, peer_port, is_sending, own_slot, peer_slot in rules:
        own = own_counts.get(own_port, ())
        peer = peer_counts.get(peer_port, ())
        if own_slot is None or peer_slot is None:
            if not calc_consistency_list(own, peer, is_sending, peer_is_restart):
                return False
        else:
            own_count = own[own_slot] if own_slot < len(own) else 0
            peer_count = peer[peer_slot] if peer_slot < len(peer) else 0
            if not calc_consistency(own_count, peer_count, is_sending, peer_is_restart):
                return False
    return True
