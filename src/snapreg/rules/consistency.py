"""Pure consistency rules and the coupling topology they apply to.

Nothing here touches a database. :func:`calc_consistency`,
:func:`calc_consistency_list` and :func:`safe_get` keep the signatures and truth
tables of MUSCLE3's ``libmuscle.manager.snapshot_registry``; :class:`Topology` is a
plain, hashable description of a model (components, multiplicities, conduits) built
from a yMMSL configuration of either version, and it answers the two questions the
registry asks on every registration: who are this instance's peers, and over which
ports does it talk to a given peer.

Instances are handled as strings (``"micro[3]"``) inside snapreg: a
``ymmsl.Reference`` hashes by building its string every time, which would dominate
the cost of a registration at a few thousand instances.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Flag, auto
from functools import cached_property, lru_cache
from typing import Any, NamedTuple, Protocol, TypeVar

from snapreg.errors import ConfigurationError, UnknownInstanceError

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
        is_sending = bool(info & ConnectionInfo.SELF_IS_SENDING)
        if info & ConnectionInfo.SELF_IS_VECTOR:
            rule = Rule(
                str(own_port), str(peer_port), is_sending, last_index(peer_instance), 0
            )
        elif info & ConnectionInfo.PEER_IS_VECTOR:
            rule = Rule(
                str(own_port), str(peer_port), is_sending, 0, last_index(own_instance)
            )
        else:
            rule = Rule(str(own_port), str(peer_port), is_sending, None, None)
        rules.append(rule)
    return tuple(rules)


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


#: More digits than any index of a model that fits in memory can have.
_MAX_INDEX_DIGITS = 18


def _shortened(text: str, limit: int = 80) -> str:
    """Text for a message, cut in the middle when longer than ``limit``."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]}"


def split_instance(instance: str) -> tuple[str, tuple[int, ...]]:
    """Split ``"micro[2][5]"`` into ``("micro", (2, 5))``.

    Raises:
        UnknownInstanceError: if the text is not an instance name.
    """
    name, bracket, rest = instance.partition("[")
    if not name:
        raise UnknownInstanceError(f"{instance!r} is not an instance name")
    if not bracket:
        return name, ()
    indices: list[int] = []
    for part in ("[" + rest).split("]")[:-1]:
        digits = part[1:]
        if not part.startswith("[") or not (digits.isascii() and digits.isdigit()):
            raise UnknownInstanceError(
                f"{_shortened(instance)!r} is not an instance name"
            )
        if len(digits) > _MAX_INDEX_DIGITS:  # no model has that many instances
            raise UnknownInstanceError(
                f"{_shortened(instance)!r}: an index of {len(digits)} digits is out of"
                " range"
            )
        indices.append(int(digits))
    if not instance.endswith("]"):
        raise UnknownInstanceError(f"{instance!r} is not an instance name")
    return name, tuple(indices)


@lru_cache(maxsize=65536)
def instance_sort_key(instance: str) -> tuple[str, tuple[int, ...]]:
    """Sort key giving yMMSL's Reference order: names, then indices numerically."""
    return split_instance(instance)


def last_index(instance: str) -> int:
    """The last index of an instance name: 3 for ``"micro[3]"``."""
    return int(instance[instance.rindex("[") + 1 : -1])


def instance_name(component: str, indices: Iterable[int]) -> str:
    """The instance name of a component at the given indices."""
    return component + "".join(f"[{index}]" for index in indices)


@dataclass(frozen=True)
class ConduitInfo:
    """A conduit, reduced to the component and port names at its two ends."""

    sender: str
    sending_port: str
    receiver: str
    receiving_port: str


class PeerSource(Protocol):
    """Anything that lists the peers of an instance (e.g. MUSCLE3's TopologyStore)."""

    def get_peer_instances(self, instance: Any) -> Iterable[Any]: ...


@dataclass(frozen=True)
class Topology:
    """The shape of a coupled model: components with multiplicities, and conduits.

    Attributes:
        model_name: Name of the model.
        components: Component name to its multiplicity (empty for a scalar).
        conduits: The conduits between components of the model. Conduits to the
            model's own ports are left out: they connect no instances.
    """

    model_name: str
    components: Mapping[str, tuple[int, ...]]
    conduits: tuple[ConduitInfo, ...]
    _peer_source: PeerSource | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def from_configuration(
        config: Any, peer_source: PeerSource | None = None
    ) -> Topology:
        """Build a topology from a yMMSL ``v0_2.Configuration`` or ``v0_1`` one.

        Args:
            config: The (flattened) configuration.
            peer_source: Optional object whose ``get_peer_instances`` is used instead
                of snapreg's own peer rule, such as MUSCLE3's ``TopologyStore``.

        Raises:
            ConfigurationError: if the configuration holds no usable model.
        """
        model = _root_model(config)
        raw_components = model.components
        if isinstance(raw_components, Mapping):
            raw_components = list(raw_components.values())
        components: dict[str, tuple[int, ...]] = {}
        for component in raw_components:
            components[str(component.name)] = tuple(
                int(size) for size in component.multiplicity
            )
        if not components:
            raise ConfigurationError(f"model {model.name} has no components")
        if not any(all(dims) for dims in components.values()):
            raise ConfigurationError(
                f"model {model.name} has no instances: every component has a"
                " multiplicity of 0"
            )
        conduits: list[ConduitInfo] = []
        for conduit in model.conduits:
            sender = str(conduit.sending_component())
            receiver = str(conduit.receiving_component())
            if sender not in components or receiver not in components:
                continue
            conduits.append(
                ConduitInfo(
                    sender,
                    str(conduit.sending_port()),
                    receiver,
                    str(conduit.receiving_port()),
                )
            )
        return Topology(str(model.name), components, tuple(conduits), peer_source)

    def signature(self) -> str:
        """A canonical text of the topology, stored to detect changed models."""
        return json.dumps(
            {
                "model": self.model_name,
                "components": {
                    name: list(dims) for name, dims in sorted(self.components.items())
                },
                "conduits": sorted(
                    [c.sender, c.sending_port, c.receiver, c.receiving_port]
                    for c in self.conduits
                ),
            },
            sort_keys=True,
        )

    @cached_property
    def instances(self) -> tuple[str, ...]:
        """Every instance of every component, in model order."""
        result: list[str] = []
        for component, dims in self.components.items():
            for indices in itertools.product(*map(range, dims)):
                result.append(instance_name(component, indices))
        return tuple(result)

    @cached_property
    def instance_set(self) -> frozenset[str]:
        """The instances as a set, for membership tests."""
        return frozenset(self.instances)

    def check_instance(self, instance: Any) -> str:
        """Return the instance's name, or raise if the model has no such instance.

        Raises:
            UnknownInstanceError: naming what is wrong with it.
        """
        name = str(instance)
        if name in self.instance_set:
            return name
        component, indices = split_instance(name)
        if component not in self.components:
            known = ", ".join(sorted(self.components))
            raise UnknownInstanceError(
                f"instance {_shortened(name)!r}: component {component!r} is not in"
                f" model {self.model_name} (components: {known})"
            )
        dims = self.components[component]
        raise UnknownInstanceError(
            f"instance {_shortened(name)!r}: component {component!r} has"
            f" multiplicity {list(dims)}, so its instances are {component}"
            + "".join(f"[0..{size - 1}]" for size in dims)
        )

    def _component_peers(self, component: str) -> dict[str, None]:
        peers: dict[str, None] = {}
        for conduit in self.conduits:
            if conduit.sender == component:
                peers[conduit.receiver] = None
            if conduit.receiver == component:
                peers[conduit.sender] = None
        return peers

    def peers(self, instance: str) -> frozenset[str]:
        """The instances that ``instance`` shares a conduit with.

        A scalar talking to a vector component has every element as a peer; an
        element has the scalar as its single peer; equal dimensions pair index-wise.
        """
        cached = self._peer_cache.get(instance)
        if cached is not None:
            return cached
        if self._peer_source is not None:
            result = frozenset(
                str(peer)
                for peer in self._peer_source.get_peer_instances(
                    _to_reference(instance)
                )
            )
        else:
            component, indices = split_instance(instance)
            dims = self.components[component]
            found: list[str] = []
            for peer in self._component_peers(component):
                peer_dims = self.components[peer]
                shared = min(len(dims), len(peer_dims))
                base = instance_name(peer, indices[:shared])
                for rest in itertools.product(*map(range, peer_dims[shared:])):
                    found.append(base + "".join(f"[{index}]" for index in rest))
            result = frozenset(found)
        self._peer_cache[instance] = result
        return result

    def connections(self, instance: str, peer: str) -> tuple[Connection, ...]:
        """Every conduit between ``instance`` and ``peer``, seen from ``instance``."""
        key = (instance, peer)
        cached = self._connection_cache.get(key)
        if cached is not None:
            return cached
        component, indices = split_instance(instance)
        peer_component, peer_indices = split_instance(peer)
        result: list[Connection] = []
        for conduit in self.conduits:
            if conduit.sender == component and conduit.receiver == peer_component:
                info = ConnectionInfo.SELF_IS_SENDING
                own_port, peer_port = conduit.sending_port, conduit.receiving_port
            elif conduit.receiver == component and conduit.sender == peer_component:
                info = ConnectionInfo(0)
                own_port, peer_port = conduit.receiving_port, conduit.sending_port
            else:
                continue
            if len(indices) < len(peer_indices):
                info |= ConnectionInfo.SELF_IS_VECTOR
            elif len(indices) > len(peer_indices):
                info |= ConnectionInfo.PEER_IS_VECTOR
            result.append(Connection(own_port, peer_port, info))
        connections = tuple(result)
        self._connection_cache[key] = connections
        return connections

    @cached_property
    def _peer_cache(self) -> dict[str, frozenset[str]]:
        return {}

    def rules(self, instance: str, peer: str) -> tuple[Rule, ...]:
        """The compiled consistency rules between ``instance`` and ``peer``."""
        key = (instance, peer)
        cached = self._rule_cache.get(key)
        if cached is None:
            cached = compile_rules(instance, peer, self.connections(instance, peer))
            self._rule_cache[key] = cached
        return cached

    @cached_property
    def _rule_cache(self) -> dict[tuple[str, str], tuple[Rule, ...]]:
        return {}

    @cached_property
    def _connection_cache(self) -> dict[tuple[str, str], tuple[Connection, ...]]:
        return {}


class TopologyStore:
    """MUSCLE3's ``TopologyStore`` interface over snapreg's :class:`Topology`.

    For code written against ``libmuscle.manager.topology_store.TopologyStore``:
    built from a configuration, it answers ``get_peer_instances`` with yMMSL
    References, and a registry accepts it (or MUSCLE3's own) as its peer source.
    """

    def __init__(self, config: Any) -> None:
        """Describe the coupling of a yMMSL configuration (either version).

        Raises:
            ConfigurationError: if the configuration holds no usable model.
        """
        self.topology = Topology.from_configuration(config)

    def get_peer_instances(self, instance: Any) -> list[Any]:
        """The instances ``instance`` shares a conduit with, as References.

        Raises:
            UnknownInstanceError: if the model has no such instance.
        """
        name = self.topology.check_instance(instance)
        return [_to_reference(peer) for peer in sorted(self.topology.peers(name))]


def declared_operators(config: Any) -> dict[str, dict[str, str]]:
    """The operator of every port the model's components declare in the yMMSL.

    Returns:
        Component name to port name to operator name (``F_INIT``, ``O_I``, ``S``,
        ``O_F``). yMMSL v0.1 declares no ports: its components map to nothing.

    Raises:
        ConfigurationError: if the configuration holds no usable model.
    """
    components = _root_model(config).components
    if isinstance(components, Mapping):
        components = list(components.values())
    declared: dict[str, dict[str, str]] = {}
    for component in components:
        # ymmsl 0.17's Ports has no items(); names and lookup work in 0.17 and 0.18
        ports = getattr(component, "ports", None) or {}
        declared[str(component.name)] = {
            str(name): str(getattr(ports[name].operator, "name", ports[name].operator))
            for name in ports
        }
    return declared


def _to_reference(instance: str) -> Any:
    from ymmsl import v0_1

    return v0_1.Reference(instance)


def _root_model(config: Any) -> Any:
    """The single model of a yMMSL configuration of either version."""
    root_model = getattr(config, "root_model", None)
    if callable(root_model):
        try:
            return root_model()
        except RuntimeError as err:
            raise ConfigurationError(
                f"configuration has no single model: {err}"
            ) from err
    model = getattr(config, "model", None)
    if model is None or not hasattr(model, "components"):
        raise ConfigurationError(
            "configuration has no model: pass a yMMSL Configuration with a model"
        )
    return model
