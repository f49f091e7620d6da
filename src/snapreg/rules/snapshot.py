"""The objects snapreg hands to callers: snapshot nodes and workflow snapshots.

They are plain data, built from committed rows, and stay valid after the registry
or its session is closed. :class:`SnapshotNode` keeps the attributes and meaning of
MUSCLE3's ``SnapshotNode``, so code written against MUSCLE3's registry reads them
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ymmsl import v0_1

from snapreg.rules.consistency import Connection, ConnectionInfo, counts_consistent
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.workflow_file import Member, resume_mapping

Reference = v0_1.Reference


@dataclass(eq=False)
class SnapshotNode:
    """A node in the snapshot graph: one snapshot of one instance.

    Attributes:
        num: The number of the snapshot. Unique for this instance within a run.
            Later snapshots always have a higher num; the restart node is 1.
        instance: Which instance this is a snapshot of.
        snapshot: The snapshot metadata reported by the instance.
        peers: The set of peers that the instance is connected to.
        consistent_peers: Per peer, the snapshots consistent with this one that
            were loaded with it (active ones from ``snapshots()``, all from
            ``history()``).
        id: Row id in the database, None for a node made by hand.
        is_restart: Whether this is the "restart from scratch" placeholder.
        run: Number of the run within its campaign.
        registered_at: When the node was stored.
        retired_at: When clean-up retired it; None while it is active.
    """

    num: int
    instance: Reference
    snapshot: SnapshotMetadata
    peers: frozenset[Reference]
    consistent_peers: dict[Reference, list[SnapshotNode]] = field(
        default_factory=dict, repr=False
    )
    id: int | None = None
    is_restart: bool = False
    run: int | None = None
    registered_at: datetime | None = None
    retired_at: datetime | None = None

    def __hash__(self) -> int:
        return object.__hash__(self)

    @property
    def consistent(self) -> bool:
        """True iff there is a consistent snapshot of every peer."""
        return all(self.consistent_peers.get(peer) for peer in self.peers)

    @property
    def active(self) -> bool:
        """Whether the node still takes part in consistency checks."""
        return self.retired_at is None

    def do_consistency_check(
        self,
        peer_node: SnapshotNode,
        connections: Iterable[Connection] | Iterable[tuple[Any, Any, Any]],
    ) -> bool:
        """Check if the snapshot of the peer is consistent with us.

        When it is, adds it to our :attr:`consistent_peers` and us to its.

        Args:
            peer_node: Snapshot of one of our peers.
            connections: All connections from our instance to the peer instance,
                as ``(own_port, peer_port, info)`` triples; ``info`` may be a
                :class:`ConnectionInfo` or MUSCLE3's ``_ConnectionInfo`` flag.

        Returns:
            True iff the peer snapshot is consistent with ours.
        """
        normalized = [
            Connection(str(own_port), str(peer_port), _connection_info(info))
            for own_port, peer_port, info in connections
        ]
        consistent = counts_consistent(
            str(self.instance),
            self.snapshot.port_message_counts,
            str(peer_node.instance),
            peer_node.snapshot.port_message_counts,
            peer_node.is_restart,
            normalized,
        )
        if consistent:
            self.consistent_peers.setdefault(peer_node.instance, []).append(peer_node)
            peer_node.consistent_peers.setdefault(self.instance, []).append(self)
        return consistent


def _connection_info(info: Any) -> ConnectionInfo:
    if isinstance(info, ConnectionInfo):
        return info
    result = ConnectionInfo(0)
    for flag in ConnectionInfo:
        other = getattr(type(info), str(flag.name), None)
        if other is not None and info & other:
            result |= flag
    return result


@dataclass(frozen=True, eq=False)
class WorkflowSnapshot:
    """A consistent set of one snapshot node per instance: a safe restart point.

    Attributes:
        id: Row id in the database.
        campaign: Name of the campaign.
        run: Number of the run within the campaign.
        nodes: The member nodes, ordered by instance.
        path: The yMMSL file to pass to ``muscle_manager`` to resume from it.
        created_at: When it was found (UTC).
        description: The human-readable description written into the file.
    """

    id: int
    campaign: str
    run: int
    nodes: tuple[SnapshotNode, ...]
    path: Path | None
    created_at: datetime
    description: str

    @property
    def resume(self) -> dict[Reference, Path]:
        """Instance to snapshot file for each member that is not a restart node."""
        return {
            Reference(instance): Path(filename)
            for instance, filename in self.resume_files.items()
        }

    @property
    def resume_files(self) -> dict[str, str]:
        """The ``resume:`` section of its file: instance to snapshot file, as sent.

        The one place the mapping is built from public objects; unlike
        :attr:`resume`, the file names are exactly as the instances reported them.
        """
        return resume_mapping(
            [
                Member(str(node.instance), node.snapshot, node.is_restart)
                for node in self.nodes
            ]
        )

    @property
    def members(self) -> frozenset[tuple[str, int]]:
        """The members as (instance, num) pairs, handy for comparisons."""
        return frozenset((str(node.instance), node.num) for node in self.nodes)
