"""A timeline picture of one run: ``snapreg plot``.

One lane per instance, lanes grouped by component (shaded bands, the name of a
component with several instances written along its band), so that a model with a
hundred instances stays readable. On each lane the instance's snapshot nodes,
placed by wallclock or simulation time: intermediate snapshots as circles, final
ones as squares, restart nodes as hollow triangles at the start; retired nodes are
faded. Grey lines join consistent pairs; every workflow snapshot is a cut across
the lanes through its members, the newest one drawn boldest.

A resumed run begins with copies: each resumed instance first registers again the
snapshot it resumed from, stamped with the earlier run's wallclock clock (see
:attr:`RunGraph.resumed_copies`). On the wallclock axis such a copy is placed at
the run's start, where the run really took it up, drawn hollow and labelled
``resumed from run N``; on the simulation axis it keeps its simulation time and
is drawn hollow too. :class:`TimelineLayout` is where everything goes, the data
the picture is drawn from.

matplotlib draws it (the ``plot`` extra): PNG and SVG directly, HTML as the SVG in
a small self-contained page. In the SVG, lane labels, the labels of components
with several instances, and cuts carry ids (``lane-<instance>``,
``component-<name>``, ``workflow-snapshot-<id>``), and text stays text, so it can
be searched and styled.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from snapreg.errors import ConfigurationError, SnapregError
from snapreg.rules.instances import split_instance
from snapreg.tools.run_graph import RecordedNode, RunGraph, load_run_graph

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TimeAxis = Literal["wallclock", "simulation"]
TIME_AXES: tuple[TimeAxis, ...] = ("wallclock", "simulation")
FORMATS = (".png", ".svg", ".html")
INSTALL_HINT = "pip install 'snapreg[plot]'"

#: Height of one lane in inches, and the limits that keep a figure drawable.
_LANE_HEIGHT = 0.24
_MIN_HEIGHT = 3.0
_MAX_HEIGHT = 120.0
_WIDTH = 13.0
_DPI = 110
_PAIR_COLOR = "#6f6f6f"
#: Above this many consistent pairs their lines are drawn thinner and lighter.
_CROWDED_PAIRS = 3000


class PlotDependencyError(SnapregError):
    """``snapreg plot`` was called without matplotlib installed."""


@dataclass(frozen=True)
class PlotSummary:
    """What a plot shows.

    Attributes:
        path: The file written.
        campaign: The campaign.
        run: The run drawn.
        lanes: Instances, one lane each.
        components: Component groups.
        nodes: Snapshot nodes drawn (restart nodes included).
        not_placed: Nodes left out because they have no time on the chosen axis
            (implicit snapshots have no simulation time).
        workflow_snapshots: Cuts drawn.
    """

    path: Path
    campaign: str
    run: int
    lanes: int
    components: int
    nodes: int
    not_placed: int
    workflow_snapshots: int


def plot_campaign(
    database_url: str,
    campaign: str | None,
    output: Path | None = None,
    *,
    run: int | None = None,
    time_axis: TimeAxis = "wallclock",
    pairs: bool = True,
) -> PlotSummary:
    """Draw a run of a campaign (default: its newest) to a PNG, SVG or HTML file.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the only one there is.
        output: The file to write; default ``<campaign>-run<N>.png`` in the
            current directory.
        run: The run's number; default: the newest.
        time_axis: Place nodes by ``wallclock`` or ``simulation`` time.
        pairs: Draw the consistent pairs.

    Raises:
        PlotDependencyError: matplotlib is missing; the message says how to
            install it.
        ConfigurationError: an output name without .png, .svg or .html.
        NotFoundError: no such database, campaign or run.
    """
    if output is not None:
        check_output(output)
    _matplotlib()  # fail before reading anything
    graph = load_run_graph(database_url, campaign, run=run)
    if output is None:
        output = Path(f"{graph.campaign}-run{graph.run}.png")
    return render(graph, output, time_axis=time_axis, pairs=pairs)


def check_output(output: Path) -> None:
    """Refuse an output file whose format is not known by its suffix.

    Raises:
        ConfigurationError: naming the formats there are.
    """
    if output.suffix.lower() not in FORMATS:
        raise ConfigurationError(
            f"cannot tell the format of {output}: name it *.png, *.svg or *.html"
        )


def render(
    graph: RunGraph,
    output: Path,
    *,
    time_axis: TimeAxis = "wallclock",
    pairs: bool = True,
) -> PlotSummary:
    """Draw a run's graph into ``output`` (format by suffix).

    Raises:
        PlotDependencyError: matplotlib is missing.
        ConfigurationError: unknown format or time axis.
    """
    check_output(output)
    if time_axis not in TIME_AXES:
        raise ConfigurationError(
            f"time axis must be one of {', '.join(TIME_AXES)}, not {time_axis!r}"
        )
    _matplotlib()
    layout = TimelineLayout(graph, time_axis)
    with _svg_text_as_text():
        figure = _draw(graph, layout, pairs)
        suffix = output.suffix.lower()
        if suffix == ".html":
            output.write_text(_html_page(graph, _svg_of(figure)), encoding="utf-8")
        else:
            figure.savefig(output, format=suffix[1:], dpi=_DPI)
    return PlotSummary(
        path=output,
        campaign=graph.campaign,
        run=graph.run,
        lanes=len(layout.lanes),
        components=len(layout.groups),
        nodes=len(layout.positions),
        not_placed=len(graph.nodes) - len(layout.positions),
        workflow_snapshots=len(graph.workflow_snapshots),
    )


def svg_text(
    graph: RunGraph, *, time_axis: TimeAxis = "wallclock", pairs: bool = True
) -> str:
    """A run's timeline as an SVG document (the ``<svg>`` element and what follows).

    Not safe to call from several threads at once: matplotlib's settings are
    global, so callers that draw from threads take turns.

    Raises:
        PlotDependencyError: matplotlib is missing.
        ConfigurationError: unknown time axis.
    """
    if time_axis not in TIME_AXES:
        raise ConfigurationError(
            f"time axis must be one of {', '.join(TIME_AXES)}, not {time_axis!r}"
        )
    _matplotlib()
    with _svg_text_as_text():
        svg = _svg_of(_draw(graph, TimelineLayout(graph, time_axis), pairs))
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _svg_of(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    return buffer.getvalue()


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise PlotDependencyError(
            f"snapreg plot needs matplotlib; install it with: {INSTALL_HINT}"
        ) from err
    return matplotlib


@contextmanager
def _svg_text_as_text() -> Iterator[None]:
    import matplotlib

    # Text as <text> elements (searchable, small) and a fixed hash salt, so that
    # the same run gives the same SVG.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "snapreg"}):
        yield


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


def _draw(graph: RunGraph, layout: TimelineLayout, pairs: bool) -> Figure:
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


def _html_page(graph: RunGraph, svg: str) -> str:
    """A self-contained page: the SVG inline and a list of the cuts it shows."""
    start = svg.find("<svg")
    rows = "\n".join(
        f"<tr><td>{snapshot.id}</td><td>{html.escape(snapshot.created_at.isoformat())}"
        f"</td><td>{len(snapshot.member_ids)}</td>"
        f"<td>{html.escape(snapshot.path)}</td></tr>"
        for snapshot in graph.workflow_snapshots
    )
    title = html.escape(f"snapreg: campaign {graph.campaign}, run {graph.run}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style>
</head>
<body>
<h1>{title}</h1>
{svg[start:] if start >= 0 else svg}
<h2>Workflow snapshots</h2>
<table>
<tr><th>ID</th><th>Created (UTC)</th><th>Members</th><th>File</th></tr>
{rows}
</table>
</body>
</html>
"""
