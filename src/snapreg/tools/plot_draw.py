"""The matplotlib figure of a run's timeline, drawn from its layout.

:func:`draw` needs matplotlib (the ``plot`` extra), imported only when it is
called; :mod:`snapreg.tools.plot` checks it is there first and writes the figure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snapreg.rules.instances import split_instance
from snapreg.tools.plot_layout import TimelineLayout
from snapreg.tools.run_graph import RunGraph

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Height of one lane in inches, and the limits that keep a figure drawable.
_LANE_HEIGHT = 0.24
_MIN_HEIGHT = 3.0
_MAX_HEIGHT = 120.0
_WIDTH = 13.0
_PAIR_COLOR = "#6f6f6f"
#: Above this many consistent pairs their lines are drawn thinner and lighter.
_CROWDED_PAIRS = 3000


def draw(graph: RunGraph, layout: TimelineLayout, pairs: bool) -> Figure:
    """A run's timeline as a matplotlib figure, placed as ``layout`` says.

    Args:
        graph: The run.
        layout: Where its lanes, groups and nodes go.
        pairs: Draw the consistent pairs.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    lane_count = max(len(layout.lanes), 1)
    height = min(_MAX_HEIGHT, max(_MIN_HEIGHT, _LANE_HEIGHT * lane_count + 1.8))
    points_per_lane = height * 72 / (lane_count + 6)
    font_size = max(3.0, min(9.0, points_per_lane * 0.6))
    marker_size = max(4.0, min(40.0, points_per_lane**2 * 0.25))
    figure = Figure(figsize=(_WIDTH, height), layout="constrained")
    axes: Axes = figure.add_subplot()
    axes.set_ylim(lane_count - 0.5, -0.5)
    span = max(layout.end - layout.start, 1e-9)
    axes.set_xlim(layout.start - 0.03 * span, layout.end + 0.03 * span)
    colors = _component_colors([name for name, _, _ in layout.groups])

    axes.set_yticks(range(len(layout.lanes)))
    axes.set_yticklabels(layout.lanes, fontsize=font_size)
    for tick, instance in zip(axes.get_yticklabels(), layout.lanes, strict=True):
        tick.set_gid(f"lane-{instance}")
    axes.tick_params(axis="y", length=0, pad=3)
    # Group labels stand left of the lane labels, written along the group's band.
    label_width = max(len(instance) for instance in layout.lanes) * font_size * 0.62
    for position, (component, first, last) in enumerate(layout.groups):
        if position % 2 == 0:
            axes.axhspan(first - 0.5, last + 0.5, color="#eeeeee", zorder=0, lw=0)
        if first == last:
            continue  # a single lane: its own label names the component
        label = axes.annotate(
            f"{component} ({last - first + 1})",
            xy=(0.0, (first + last) / 2),
            xycoords=("axes fraction", "data"),
            xytext=(-(label_width + 10), 0),
            textcoords="offset points",
            rotation=90,
            ha="center",
            va="center",
            fontsize=min(font_size + 2, 11),
            fontweight="bold",
            color=colors[component],
        )
        label.set_gid(f"component-{component}")

    if pairs:
        segments = [
            [layout.positions[lower], layout.positions[higher]]
            for lower, higher in graph.edges
            if lower in layout.positions and higher in layout.positions
        ]
        if segments:
            # Visible at a glance, yet lighter where thousands would cover all.
            crowded = len(segments) > _CROWDED_PAIRS
            collection = LineCollection(
                segments,
                colors=_PAIR_COLOR,
                linewidths=0.7 if crowded else 1.2,
                alpha=0.35 if crowded else 0.7,
                zorder=1,
            )
            collection.set_gid("consistent-pairs")
            axes.add_collection(collection)

    cut_count = len(graph.workflow_snapshots)
    for order, snapshot in enumerate(graph.workflow_snapshots):
        points = sorted(
            (
                layout.positions[node_id]
                for node_id in snapshot.member_ids
                if node_id in layout.positions
            ),
            key=lambda point: point[1],
        )
        newest = order == cut_count - 1
        (line,) = axes.plot(
            [point[0] for point in points],
            [point[1] for point in points],
            color="#d62728" if newest else "#1f77b4",
            linewidth=2.4 if newest else 1.1,
            alpha=0.95 if newest else 0.25 + 0.5 * (order + 1) / max(cut_count, 1),
            zorder=3 if newest else 2,
        )
        line.set_gid(f"workflow-snapshot-{snapshot.id}")

    copies = layout.resumed_copies
    for active in (False, True):
        for kind, marker in (("intermediate", "o"), ("final", "s")):
            chosen = [
                node
                for node in graph.nodes.values()
                if node.id in layout.positions
                and not node.is_restart
                and node.id not in copies
                and node.active == active
                and (node.is_final == (kind == "final"))
            ]
            if not chosen:
                continue
            axes.scatter(
                [layout.positions[node.id][0] for node in chosen],
                [layout.positions[node.id][1] for node in chosen],
                s=marker_size,
                marker=marker,
                c=[colors[split_instance(node.instance)[0]] for node in chosen],
                alpha=1.0 if active else 0.28,
                edgecolors="black" if active else "none",
                linewidths=0.4,
                zorder=4,
            )
            resent = [
                node
                for node in graph.nodes.values()
                if node.id in layout.positions
                and node.id in copies
                and node.active == active
                and (node.is_final == (kind == "final"))
            ]
            if resent:
                drawn = axes.scatter(
                    [layout.positions[node.id][0] for node in resent],
                    [layout.positions[node.id][1] for node in resent],
                    s=marker_size * 1.6,
                    marker=marker,
                    facecolors="white",
                    edgecolors=[
                        colors[split_instance(node.instance)[0]] for node in resent
                    ],
                    alpha=1.0 if active else 0.45,
                    linewidths=1.3,
                    zorder=5,
                )
                drawn.set_gid(f"resumed-copies-{'active' if active else 'retired'}")
    for run in sorted(set(copies.values())):
        lanes = sorted(
            layout.positions[node_id][1]
            for node_id, source in copies.items()
            if source == run and node_id in layout.positions
        )
        if not lanes:
            continue
        label = axes.annotate(
            f"resumed from run {run}",
            xy=(layout.start, lanes[0]),
            xytext=(8, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=max(font_size, 7.0),
            color="#333333",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#999999"},
            zorder=6,
        )
        label.set_gid(f"resumed-from-run-{run}")
    for active in (False, True):
        restarts = [
            node
            for node in graph.nodes.values()
            if node.is_restart and node.active == active and node.id in layout.positions
        ]
        if restarts:
            axes.scatter(
                [layout.positions[node.id][0] for node in restarts],
                [layout.positions[node.id][1] for node in restarts],
                s=marker_size,
                marker=">",
                facecolors="none",
                edgecolors="#555555",
                alpha=1.0 if active else 0.3,
                linewidths=0.6,
                zorder=4,
            )

    axes.set_xlabel(
        "wallclock time (s)" if layout.time_axis == "wallclock" else "simulation time"
    )
    axes.grid(axis="x", color="#dddddd", linewidth=0.5, zorder=0)
    not_placed = len(graph.nodes) - len(layout.positions)
    title = (
        f"Campaign {graph.campaign}, run {graph.run} of {graph.runs}:"
        f" {sum(1 for node in graph.nodes.values() if not node.is_restart)}"
        f" snapshots of {len(layout.lanes)} instances,"
        f" {cut_count} workflow snapshot{'' if cut_count == 1 else 's'}"
    )
    if not_placed:
        title += f" ({not_placed} without {layout.time_axis} time not shown)"
    if graph.total_nodes > len(graph.nodes):
        title += (
            f"; only the newest {len(graph.nodes):,} of its"
            f" {graph.total_nodes:,} nodes drawn"
        )
    axes.set_title(title, fontsize=10, loc="left")
    axes.legend(
        handles=_legend_handles(Line2D),
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=8,
        frameon=False,
    )
    return figure


def _component_colors(components: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(index % 10) for index, name in enumerate(components)}


def _legend_handles(line_class: Any) -> list[Any]:
    return [
        line_class(
            [],
            [],
            marker="o",
            linestyle="",
            color="#777777",
            markeredgecolor="black",
            label="intermediate snapshot",
        ),
        line_class(
            [],
            [],
            marker="s",
            linestyle="",
            color="#777777",
            markeredgecolor="black",
            label="final snapshot",
        ),
        line_class(
            [],
            [],
            marker="o",
            linestyle="",
            color="#777777",
            alpha=0.28,
            label="retired (faded)",
        ),
        line_class(
            [],
            [],
            marker=">",
            linestyle="",
            markerfacecolor="none",
            markeredgecolor="#555555",
            label="restart node",
        ),
        line_class(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="white",
            markeredgecolor="#555555",
            markeredgewidth=1.3,
            label="resumed from (re-sent copy)",
        ),
        line_class(
            [], [], color=_PAIR_COLOR, linewidth=1.2, alpha=0.7, label="consistent pair"
        ),
        line_class([], [], color="#1f77b4", linewidth=1.1, label="workflow snapshot"),
        line_class(
            [], [], color="#d62728", linewidth=2.4, label="newest workflow snapshot"
        ),
    ]
