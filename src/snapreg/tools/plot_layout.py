"""Where a run's timeline puts lanes, groups and nodes: the data it is drawn from.

:class:`TimelineLayout` is computed from a :class:`~snapreg.tools.run_graph.RunGraph`
and a time axis, without matplotlib: :mod:`snapreg.tools.plot_draw` draws it.
"""

from __future__ import annotations

import math
from typing import Literal

from snapreg.rules.instances import split_instance
from snapreg.tools.run_graph import RecordedNode, RunGraph

TimeAxis = Literal["wallclock", "simulation"]
TIME_AXES: tuple[TimeAxis, ...] = ("wallclock", "simulation")


class TimelineLayout:
    """Where lanes, groups and nodes go: the data a timeline is drawn from.

    Attributes:
        time_axis: ``wallclock`` or ``simulation``.
        lanes: The instances, one lane each, top to bottom.
        lane_of: Each instance's lane.
        groups: (component, first lane, last lane), in model order.
        start: Where the axis starts: 0 s on the wallclock axis, the earliest
            simulation time otherwise.
        end: The latest time of a snapshot the run took itself.
        positions: Per node id, its (time, lane); nodes without a time on the
            axis are left out.
        resumed_copies: Per node id of a resumed instance's copy of the snapshot
            it resumed from, the run it was resumed from (see
            :attr:`RunGraph.resumed_copies`). On the wallclock axis these stand
            at ``start``: their own wallclock time is the earlier run's clock.
    """

    def __init__(self, graph: RunGraph, time_axis: TimeAxis) -> None:
        self.time_axis = time_axis
        self.lanes = graph.instances
        self.lane_of = {instance: index for index, instance in enumerate(self.lanes)}
        self.groups: list[tuple[str, int, int]] = []  # component, first, last lane
        for index, instance in enumerate(self.lanes):
            component = split_instance(instance)[0]
            if self.groups and self.groups[-1][0] == component:
                name, first, _ = self.groups[-1]
                self.groups[-1] = (name, first, index)
            else:
                self.groups.append((component, index, index))
        self.resumed_copies = {
            node_id: run
            for node_id, run in graph.resumed_copies.items()
            if node_id in graph.nodes
        }
        # A copy's wallclock time is the earlier run's: it takes up the start.
        at_start = time_axis == "wallclock"
        times = [
            time
            for node in graph.nodes.values()
            if not node.is_restart and not (at_start and node.id in self.resumed_copies)
            for time in [self._time(node)]
            if time is not None
        ]
        if time_axis == "simulation":
            times += [
                time
                for node_id in self.resumed_copies
                for time in [self._time(graph.nodes[node_id])]
                if time is not None
            ]
        # Restart nodes stand for "from scratch": at the start of the axis.
        self.start = 0.0 if time_axis == "wallclock" else min(times, default=0.0)
        self.end = max(times, default=self.start + 1.0)
        self.positions: dict[int, tuple[float, int]] = {}
        for node in graph.nodes.values():
            if node.instance not in self.lane_of:
                continue
            if node.is_restart or (at_start and node.id in self.resumed_copies):
                time: float | None = self.start
            else:
                time = self._time(node)
            if time is not None:
                self.positions[node.id] = (time, self.lane_of[node.instance])

    def _time(self, node: RecordedNode) -> float | None:
        if self.time_axis == "wallclock":
            time: float | None = node.wallclock_time
        else:
            time = node.simulation_time
        if time is None or not math.isfinite(time):
            return None
        return time
