"""MUSCLE3's own snapshot registry, driven synchronously as a test oracle.

``libmuscle.manager.snapshot_registry.SnapshotRegistry`` is a thread that takes
registrations from a queue. Here its thread is never started: the restart nodes its
constructor queued are drained through ``_add_snapshot`` first (one per instance,
num 1), then every registration of a stream is passed to ``_add_snapshot`` directly.
``_write_snapshot_ymmsl`` is replaced on the instance so that workflow snapshots are
captured instead of written to files.
"""

from __future__ import annotations

import copy
import queue
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from libmuscle.manager.snapshot_registry import SnapshotNode, SnapshotRegistry
from libmuscle.manager.topology_store import TopologyStore
from libmuscle.snapshot import SnapshotMetadata
from ymmsl.v0_2 import Reference

from .streams import Stream

WorkflowSnapshot = frozenset[tuple[str, int]]
"""A workflow snapshot as a set of (instance, num) members."""


@dataclass(frozen=True)
class OracleStep:
    """What MUSCLE3's registry did for one registration.

    Attributes:
        instance: The instance that registered.
        num: The num MUSCLE3 gave the new node (restart nodes have 1).
        workflow_snapshots: The workflow snapshots written because of this
            registration, in MUSCLE3's order.
        resume: For each of ``workflow_snapshots``, the ``resume`` mapping of its
            yMMSL file: instance to snapshot filename, for every member that is not
            a restart node.
        active: For every instance, the nums of its nodes still in the registry
            after this registration, ascending.
    """

    instance: str
    num: int
    workflow_snapshots: list[WorkflowSnapshot]
    resume: list[dict[str, str]]
    active: dict[str, list[int]]


class _CapturingRegistry:
    """Owns a MUSCLE3 registry whose yMMSL writes are captured, not performed."""

    def __init__(self, stream: Stream) -> None:
        """Create the registry for the stream's configuration and add its restart
        nodes.

        Args:
            stream: The stream whose configuration defines the instances.
        """
        config = stream.config
        self.registry = SnapshotRegistry(config, Path("."), TopologyStore(config))
        self.written: list[list[SnapshotNode]] = []
        # Replacing the bound method on the instance keeps the class untouched.
        self.registry._write_snapshot_ymmsl = self._capture  # type: ignore[method-assign]
        self._drain_queue()

    def _drain_queue(self) -> None:
        """Process what the constructor queued: one restart node per instance."""
        pending = self.registry._queue
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            assert item is not None
            self.registry._add_snapshot(*item)

    def _capture(self, selected_snapshots: list[SnapshotNode]) -> None:
        """Stand-in for ``_write_snapshot_ymmsl``: remember the members."""
        self.written.append(list(selected_snapshots))

    def resume_mapping(self, members: list[SnapshotNode]) -> dict[str, str]:
        """Return the ``resume`` mapping MUSCLE3 would write for these members."""
        config = self.registry._generate_snapshot_config(list(members), datetime.now())
        return {str(instance): str(path) for instance, path in config.resume.items()}

    def active(self) -> dict[str, list[int]]:
        """Return the nums of the nodes kept per instance, ascending."""
        return {
            str(instance): sorted(node.num for node in nodes)
            for instance, nodes in sorted(self.registry._snapshots.items())
        }


def run_oracle(stream: Stream) -> list[OracleStep]:
    """Feed a stream to MUSCLE3's registry and record what it does.

    Args:
        stream: The configuration and registrations to replay.

    Returns:
        One step per registration, in order.
    """
    capturing = _CapturingRegistry(stream)
    registry = capturing.registry
    steps: list[OracleStep] = []
    for instance_name, fields in stream.registrations:
        instance = Reference(instance_name)
        # A private copy: the registry keeps the metadata it is given.
        metadata = SnapshotMetadata(**copy.deepcopy(fields))
        capturing.written.clear()
        registry._add_snapshot(instance, metadata)
        new_node = registry._snapshots[instance][-1]
        workflow_snapshots = [
            frozenset((str(node.instance), node.num) for node in members)
            for members in capturing.written
        ]
        resume = [capturing.resume_mapping(members) for members in capturing.written]
        steps.append(
            OracleStep(
                instance=instance_name,
                num=new_node.num,
                workflow_snapshots=workflow_snapshots,
                resume=resume,
                active=capturing.active(),
            )
        )
    return steps


def workflow_snapshot_count(steps: list[OracleStep]) -> int:
    """Return the total number of workflow snapshots over all steps."""
    return sum(len(step.workflow_snapshots) for step in steps)
