"""The coupling topology of a model: components, conduits, peers and connections.

:class:`Topology` is a plain, hashable description of a model (components,
multiplicities, conduits) built from a yMMSL configuration of either version, and
it answers the two questions the registry asks on every registration: who are this
instance's peers, and over which ports does it talk to a given peer.
:class:`TopologyStore` offers it behind MUSCLE3's ``TopologyStore`` interface.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from snapreg.errors import ConfigurationError, UnknownInstanceError
from snapreg.rules.consistency import Connection, ConnectionInfo, Rule, compile_rules
from snapreg.rules.instances import instance_name, shortened, split_instance


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
                f"instance {shortened(name)!r}: component {component!r} is not in"
                f" model {self.model_name} (components: {known})"
            )
        dims = self.components[component]
        raise UnknownInstanceError(
            f"instance {shortened(name)!r}: component {component!r} has"
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
        # the same for every pair of instances of the two components
        shape = (component, peer_component, len(indices) - len(peer_indices))
        connections = self._connection_cache.get(shape)
        if connections is None:
            connections = self._component_connections(*shape)
            self._connection_cache[shape] = connections
        self._connection_cache[key] = connections
        return connections

    def _component_connections(
        self, component: str, peer_component: str, depth: int
    ) -> tuple[Connection, ...]:
        """:meth:`connections` between instances of two components; ``depth``:
        how many more indices the instance has than the peer."""
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
            if depth < 0:
                info |= ConnectionInfo.SELF_IS_VECTOR
            elif depth > 0:
                info |= ConnectionInfo.PEER_IS_VECTOR
            result.append(Connection(own_port, peer_port, info))
        return tuple(result)

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
    def _connection_cache(
        self,
    ) -> dict[tuple[str, str] | tuple[str, str, int], tuple[Connection, ...]]:
        # per pair of instances, and per pair of components and depth
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
