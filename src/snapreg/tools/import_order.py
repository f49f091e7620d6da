"""The order in which ``snapreg import`` registers a run directory's snapshots.

The order of registrations matters. Each instance's own snapshots go in the order
it took them. Across instances the manager saw them in the order they arrived,
which the run directory does not record; the closest record is the wallclock time
in each snapshot (seconds since the manager started, the same clock for every
instance), so instances are interleaved by it. An instance that resumed stores the
snapshot it resumed from again as its first file, with the old wallclock time;
those copies were sent first thing at start-up and go first.

Where registrations of different instances lie further apart than the manager's
own scheduling jitter (a few milliseconds), this gives the same workflow snapshots
as the manager wrote. Where they race, MUSCLE3's clean-up makes the result depend
on who came first, and the manager's own output differs from run to run. When the
manager left its workflow snapshot files in ``RUN_DIR/snapshots``, they tell who
came first: the registrations are replayed in memory (on the registry's own
:class:`~snapreg.rules.graph.ActiveGraph`), and where the replay finds workflow
snapshots other than the manager's next ones, the other instances' next snapshots
within the race window are tried first, so that the import finds what the manager
found.

An instance that starts late on a busy host sends its resume copy after the other
instances have sent new snapshots. When the manager's files say that the copies
did not all come first, the copies are placed by when their files were written
instead: the modification time, on the manager's clock (which the new snapshots'
files give: their modification time less their wallclock time).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ymmsl

from snapreg.errors import ConfigurationError
from snapreg.rules.graph import ActiveGraph, GraphNode
from snapreg.rules.metadata import coerce_metadata, restart_metadata
from snapreg.rules.topology import Topology

#: A workflow snapshot as a set of (instance, snapshot file below the run directory).
ResumeKey = frozenset[tuple[str, str]]

#: Snapshots of different instances taken this close together (wallclock seconds)
#: may have reached the manager in either order.
RACE_WINDOW = 0.5
#: At most this many other orders are tried for one registration.
MAX_TRIALS = 32


@dataclass(frozen=True)
class SnapshotFile:
    """One instance snapshot file of the run directory, and what it holds.

    Attributes:
        instance: The instance that saved it.
        number: Its number in the file name: the instance's order of taking them.
        path: Where it is.
        metadata: The metadata libmuscle built from it (a
            ``libmuscle.snapshot.SnapshotMetadata``).
        is_resume_copy: Whether it is the copy of the snapshot the instance
            resumed from, stored again when it started.
    """

    instance: str
    number: int
    path: Path
    metadata: Any
    is_resume_copy: bool


def registration_order(
    files: Iterable[SnapshotFile],
    topology: Topology,
    manager_snapshots: list[ResumeKey] | None = None,
) -> list[SnapshotFile]:
    """The order in which to register the snapshots.

    Args:
        files: Every snapshot file of the run.
        topology: The run's model.
        manager_snapshots: The manager's workflow snapshots in the order it wrote
            them, if it left them: then races are settled their way.
    """
    queues = _instance_queues(files)
    ordered = _interleave(queues, _first)
    if manager_snapshots is None:
        return ordered
    expected = set(manager_snapshots)
    if _replayed(topology, ordered) == expected:
        return ordered
    copies_by_time = _copies_by_time(queues)
    if copies_by_time is not None:  # else no clock to place the copies by
        for choose in (_first, _GuidedChoice(topology, manager_snapshots)):
            timed = _interleave(queues, choose, copies_by_time)
            if _replayed(topology, timed) == expected:
                return timed
    return _interleave(queues, _GuidedChoice(topology, manager_snapshots))


def _replayed(topology: Topology, ordered: list[SnapshotFile]) -> set[ResumeKey]:
    """The workflow snapshots an order of registrations finds."""
    replay = _Replay(topology)
    found: set[ResumeKey] = set()
    for snapshot_file in ordered:
        found.update(replay.register(snapshot_file))
    return found


def _copies_by_time(queues: dict[str, list[SnapshotFile]]) -> dict[Path, float] | None:
    """When each resume copy was written, in wallclock seconds of this run.

    The copies hold the wallclock time of the run they were taken in. Their files'
    modification times are of this run; the new snapshots' files give the offset
    between the two clocks (the smallest modification time less wallclock time,
    as a file is written just after its wallclock time is read). None without a
    new snapshot or a copy whose file can be read.
    """
    items = [item for queue in queues.values() for item in queue]
    written = {item.path: _modified_ns(item.path) / 1e9 for item in items}
    offsets = [
        written[item.path] - float(item.metadata.wallclock_time)
        for item in items
        if not item.is_resume_copy and written[item.path]
    ]
    copies = [item.path for item in items if item.is_resume_copy]
    if not offsets or not copies or not all(written[path] for path in copies):
        return None
    offset = min(offsets)
    return {path: written[path] - offset for path in copies}


def _instance_queues(files: Iterable[SnapshotFile]) -> dict[str, list[SnapshotFile]]:
    queues: dict[str, list[SnapshotFile]] = {}
    for snapshot_file in files:
        queues.setdefault(snapshot_file.instance, []).append(snapshot_file)
    for queue in queues.values():
        queue.sort(key=lambda item: item.number)
    return queues


_Key = tuple[bool, float, int, int]
Chooser = Callable[[list[SnapshotFile]], SnapshotFile]


def _interleave(
    queues: dict[str, list[SnapshotFile]],
    choose: Chooser,
    copies_by_time: dict[Path, float] | None = None,
) -> list[SnapshotFile]:
    """Merge the instances' queues, each kept in order.

    ``choose`` picks the next registration among the instances' next files,
    which it gets ordered as the manager most likely saw them: resume copies
    first, then by wallclock time, modification time and instance. With
    ``copies_by_time`` (each copy's file's time on this run's wallclock), the
    copies go by that time instead of first.
    """
    rank = {instance: position for position, instance in enumerate(queues)}
    positions = {instance: 0 for instance in queues}

    def key(item: SnapshotFile) -> _Key:
        if copies_by_time is not None and item.is_resume_copy:
            return (True, copies_by_time[item.path], 0, rank[item.instance])
        return (
            not item.is_resume_copy or copies_by_time is not None,
            float(item.metadata.wallclock_time),
            _modified_ns(item.path),
            rank[item.instance],
        )

    heads = {instance: key(queue[0]) for instance, queue in queues.items() if queue}
    ordered: list[SnapshotFile] = []
    while heads:
        candidates = [
            queues[instance][positions[instance]]
            for instance in sorted(heads, key=heads.__getitem__)
        ]
        chosen = choose(candidates)
        ordered.append(chosen)
        instance = chosen.instance
        positions[instance] += 1
        if positions[instance] < len(queues[instance]):
            heads[instance] = key(queues[instance][positions[instance]])
        else:
            del heads[instance]
    return ordered


def _first(candidates: list[SnapshotFile]) -> SnapshotFile:
    return candidates[0]


class _GuidedChoice:
    """Settle races the way the manager did, as its files show.

    The next registration is the default one, unless it would find workflow
    snapshots other than the manager's next ones: then the other instances' next
    snapshots within :data:`RACE_WINDOW` are tried, each on a copy of the
    replayed graph. The first that finds exactly the manager's next ones goes
    first, or one that finds nothing but is a member of the manager's next
    workflow snapshot (it must have arrived before that one was found). When
    none fits, the default one goes first after all.
    """

    def __init__(self, topology: Topology, manager_snapshots: list[ResumeKey]) -> None:
        self.replay = _Replay(topology)
        self.manager_snapshots = manager_snapshots
        self.matched = 0  # how many of the manager's have been found so far

    def __call__(self, candidates: list[SnapshotFile]) -> SnapshotFile:
        first = candidates[0]
        latest = float(first.metadata.wallclock_time) + RACE_WINDOW
        racing = [
            candidate
            for candidate in candidates[1:MAX_TRIALS]
            if candidate.is_resume_copy
            or float(candidate.metadata.wallclock_time) <= latest
        ]
        # With nothing else that could have come first, or nothing left of the
        # manager's files to go by, there is nothing to try: no copy needed.
        if not racing or self.matched >= len(self.manager_snapshots):
            self.matched += len(self.replay.register(first))
            return first
        first_trial = self.replay.copy()
        first_found = first_trial.register(first)
        if self._matches(first_found):
            self._accept(first_trial, first_found)
            return first
        # The next workflow snapshot the manager wrote: a racing snapshot that
        # finds nothing yet may go first only if it is one of its members.
        upcoming = self.manager_snapshots[self.matched]
        for candidate in racing:
            trial = self.replay.copy()
            found = trial.register(candidate)
            if (found and self._matches(found)) or (
                not found and _file_key(candidate) in upcoming
            ):
                self._accept(trial, found)
                return candidate
        self._accept(first_trial, first_found)  # no other fits: as by default
        return first

    def _matches(self, found: list[ResumeKey]) -> bool:
        """Whether found workflow snapshots are the manager's next ones (or none)."""
        expected = self.manager_snapshots[self.matched : self.matched + len(found)]
        return set(found) == set(expected)

    def _accept(self, trial: _Replay, found: list[ResumeKey]) -> None:
        self.replay = trial
        self.matched += len(found)


def _file_key(snapshot_file: SnapshotFile) -> tuple[str, str]:
    """How a snapshot file appears in a :data:`ResumeKey`."""
    return next(iter(resume_key([(snapshot_file.instance, str(snapshot_file.path))])))


class _Replay:
    """Registrations replayed in memory, on the registry's own graph code."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.graph = ActiveGraph(topology)
        self.next_id = 1
        restart = restart_metadata()
        for instance in topology.instances:  # restart nodes first, as the registry
            self._add(instance, restart, is_restart=True)

    def _add(self, instance: str, metadata: Any, *, is_restart: bool) -> GraphNode:
        node = self.graph.new_node(self.next_id, instance, metadata, is_restart)
        self.next_id += 1
        self.graph.add(node)
        return node

    def register(self, snapshot_file: SnapshotFile) -> list[ResumeKey]:
        """Register one snapshot; return the workflow snapshots it completes."""
        node = self._add(
            snapshot_file.instance,
            coerce_metadata(snapshot_file.metadata),
            is_restart=False,
        )
        found = self.graph.find_workflow_snapshots(node)
        if found:
            self.graph.retire(self.graph.plan_retirement(found))
        return [
            resume_key(
                (member.instance, member.metadata.snapshot_filename)
                for member in members
                if not member.is_restart
            )
            for members in found
        ]

    def copy(self) -> _Replay:
        """An independent copy (the topology and the metadata are shared)."""
        memo: dict[int, Any] = {id(self.topology): self.topology}
        for nodes in self.graph.nodes.values():
            for node in nodes:
                memo[id(node.metadata)] = node.metadata
        return copy.deepcopy(self, memo)


def manager_workflow_snapshots(run_dir: Path) -> list[ResumeKey] | None:
    """The workflow snapshots the manager wrote to ``RUN_DIR/snapshots``, in the
    order it wrote them; None when it left none.

    Raises:
        ConfigurationError: a file that cannot be read.
    """
    folder = run_dir / "snapshots"
    paths = list(folder.glob("snapshot_*.ymmsl")) if folder.is_dir() else []
    if not paths:
        return None
    written: list[ResumeKey] = []
    for path in sorted(paths, key=_written_order):
        try:
            document: Any = ymmsl.load(path)
        except Exception as err:  # yatiml raises many kinds; all mean unreadable
            raise ConfigurationError(f"cannot read {path}: {err}") from err
        written.append(
            resume_key((str(k), str(v)) for k, v in (document.resume or {}).items())
        )
    return written


def _written_order(path: Path) -> tuple[str, int]:
    """``snapshot_<date>_<time>[_<n>].ymmsl``: by the second, then by n."""
    stem = path.stem
    base, _, counter = stem.rpartition("_")
    if base.count("_") == 2 and counter.isdigit():
        return base, int(counter)
    return stem, -1


def resume_key(resume: Iterable[tuple[str, str]]) -> ResumeKey:
    """A resume mapping with each file named from its ``instances/`` folder on."""
    return frozenset((instance, _below_run_dir(path)) for instance, path in resume)


def _below_run_dir(path: str) -> str:
    parts = Path(path).parts
    if "instances" in parts:
        index = len(parts) - 1 - parts[::-1].index("instances")
        return "/".join(parts[index:])
    return path


def _modified_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0
