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
is drawn hollow too. :class:`~snapreg.tools.plot_layout.TimelineLayout` is where
everything goes, the data the picture is drawn from.

matplotlib draws it (the ``plot`` extra; :func:`~snapreg.tools.plot_draw.draw`),
and this module writes it: PNG and SVG directly, HTML as the SVG in a small
self-contained page. In the SVG, lane labels, the labels of components
with several instances, and cuts carry ids (``lane-<instance>``,
``component-<name>``, ``workflow-snapshot-<id>``), and text stays text, so it can
be searched and styled.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapreg.errors import ConfigurationError, SnapregError
from snapreg.tools.plot_draw import draw
from snapreg.tools.plot_layout import TIME_AXES, TimeAxis, TimelineLayout
from snapreg.tools.run_graph import RunGraph, load_run_graph

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = (".png", ".svg", ".html")
INSTALL_HINT = "pip install 'snapreg[plot]'"

#: Resolution of a PNG, in dots per inch.
_DPI = 110


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
        figure = draw(graph, layout, pairs)
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
        svg = _svg_of(draw(graph, TimelineLayout(graph, time_axis), pairs))
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
