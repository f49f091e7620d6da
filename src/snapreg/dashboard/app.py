"""The dashboard's web application: routes, pages and errors (Starlette).

Every route only reads, through :class:`~snapreg.dashboard.pages.DashboardData`,
and answers GET (and HEAD) alone. Pages are rendered on the server from Jinja2
templates; one small script (``static/dashboard.js``, no build step, nothing
loaded from elsewhere) keeps an open page live: it asks ``/api/state`` every two
seconds and, when the answer changes, fetches the page again and swaps in its
live parts. It also ticks the ages and loads the two slow parts, the timeline and
the disk figures, after the page is shown.

Routes:

* ``/``: every campaign, its runs, status and newest workflow snapshot;
* ``/campaigns/NAME``: one campaign, its restart points, its runs, its disk,
  and its newest run;
* ``/campaigns/NAME/runs/N``: one run: timeline, workflow snapshots, explain;
* ``/campaigns/NAME/runs/N/timeline.svg?time=wallclock|simulation``;
* ``/campaigns/NAME/disk?keep=N[&again=1]``: the disk part of the campaign page
  (worked out once per state of the database, unless asked ``again``);
* ``/workflow-snapshots/ID/resume.ymmsl?with_config=0|1``: the resume file;
* ``/api/state``: the token that changes when the pages may have;
* ``/static/...``: the stylesheet and the script.

An unknown campaign, run or id is a 404 page, bad input a 400 page, a database
that cannot be read a 503 page; never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from snapreg.dashboard.pages import TIMELINE_NODES, DashboardData
from snapreg.dashboard.run_page import SNAPSHOTS_SHOWN
from snapreg.errors import InvalidInputError, NotFoundError, SnapregError
from snapreg.storage.schema import MAX_ID, MAX_NUMBER
from snapreg.tools.plot_layout import TIME_AXES

_log = logging.getLogger(__name__)

#: How often an open page asks whether anything changed, in milliseconds.
POLL_MILLISECONDS = 2000
_STATIC = Path(__file__).parent / "static"
_BOOLEANS = {"0": False, "1": True, "false": False, "true": True}


class BadRequest(InvalidInputError):
    """A query parameter the dashboard cannot use."""


def create_app(data: DashboardData) -> Starlette:
    """The dashboard over one database.

    Args:
        data: The database's pages; the caller closes it after the app is done.
    """
    templates = Environment(
        loader=PackageLoader("snapreg.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters["age"] = _age
    templates.filters["utc"] = _utc_text
    templates.filters["iso"] = _iso
    templates.filters["size"] = _size
    templates.globals["campaign_url"] = campaign_url

    def page(
        request: Request, template: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        values = {
            "location": data.location,
            "state": "",
            "poll": POLL_MILLISECONDS,
            "path": request.url.path,
            "now": datetime.now(timezone.utc).isoformat(),
            **context,
        }
        html = templates.get_template(template).render(values)
        return HTMLResponse(html, status_code=status)

    def overview(request: Request) -> Response:
        state = data.state()
        return page(
            request, "overview.html", {"campaigns": data.campaigns(), "state": state}
        )

    def campaign(request: Request) -> Response:
        name = request.path_params["campaign"]
        keep = _keep(request)
        state = data.state()
        found = data.campaign(name)
        newest = found.summary.runs[-1].number if found.summary.runs else None
        return page(
            request,
            "campaign.html",
            {
                "campaign": found,
                "run": None
                if newest is None
                else data.run(name, newest, found.summary),
                "keep": keep,
                "time_axis": _time_axis(request),
                "state": state,
                "shown": SNAPSHOTS_SHOWN,
            },
        )

    def run(request: Request) -> Response:
        name = request.path_params["campaign"]
        number = _run_number(request)
        state = data.state()
        return page(
            request,
            "run.html",
            {
                "run": data.run(name, number),
                "time_axis": _time_axis(request),
                "state": state,
                "shown": SNAPSHOTS_SHOWN,
            },
        )

    def timeline(request: Request) -> Response:
        name = request.path_params["campaign"]
        svg = data.timeline(name, _run_number(request), _time_axis(request))
        return Response(
            svg,
            media_type="image/svg+xml",
            headers={"Cache-Control": "no-cache"},
        )

    def disk(request: Request) -> Response:
        name = request.path_params["campaign"]
        usage = data.disk(name, _keep(request), again=_flag(request, "again"))
        return page(request, "disk.html", {"disk": usage})

    def resume_file(request: Request) -> Response:
        snapshot_id = request.path_params["snapshot_id"]
        if snapshot_id > MAX_ID:
            raise NotFoundError(f"no workflow snapshot {snapshot_id}")
        with_config = _flag(request, "with_config")
        snapshot = data.workflow_snapshot(snapshot_id)
        text = data.resume_text(snapshot, with_config=with_config)
        stem = Path(str(snapshot.path)).stem if snapshot.path else f"ws{snapshot.id}"
        name = f"{stem}{'-with-config' if with_config else ''}.ymmsl"
        return Response(
            text,
            media_type="application/x-yaml; charset=utf-8",
            headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"
            },
        )

    def state(request: Request) -> Response:
        return JSONResponse(
            {"state": data.state(), "now": datetime.now(timezone.utc).isoformat()},
            headers={"Cache-Control": "no-store"},
        )

    def not_found(request: Request, exc: Exception) -> Response:
        return page(request, "error.html", _error(404, "Not found", exc), 404)

    def bad_request(request: Request, exc: Exception) -> Response:
        return page(request, "error.html", _error(400, "Bad request", exc), 400)

    def unavailable(request: Request, exc: Exception) -> Response:
        _log.warning("cannot read the database: %s", exc)
        return page(request, "error.html", _error(503, "Cannot read", exc), 503)

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title = {404: "Not found", 405: "Method not allowed"}.get(
            exc.status_code, "Error"
        )
        message = (
            f"there is no page at {request.url.path}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        return page(
            request,
            "error.html",
            {"status": exc.status_code, "title": title, "message": message},
            exc.status_code,
        )

    def internal_error(request: Request, exc: Exception) -> Response:
        _log.error("dashboard page %s failed", request.url.path, exc_info=exc)
        return page(
            request,
            "error.html",
            {
                "status": 500,
                "title": "Internal error",
                "message": "this page failed; the dashboard's log has the details",
            },
            500,
        )

    routes = [
        Route("/", overview, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route(
            "/workflow-snapshots/{snapshot_id:int}/resume.ymmsl",
            resume_file,
            methods=["GET"],
        ),
        Route(
            "/campaigns/{campaign:path}/runs/{run:int}/timeline.svg",
            timeline,
            methods=["GET"],
        ),
        Route("/campaigns/{campaign:path}/runs/{run:int}", run, methods=["GET"]),
        Route("/campaigns/{campaign:path}/disk", disk, methods=["GET"]),
        Route("/campaigns/{campaign:path}", campaign, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            NotFoundError: not_found,
            InvalidInputError: bad_request,
            SnapregError: unavailable,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )


def campaign_url(name: str, *parts: object) -> str:
    """The path of a campaign's page (or of a page under it)."""
    return "/".join([f"/campaigns/{quote(name, safe='')}", *map(str, parts)])


# ----------------------------------------------------------------- parameters


def _run_number(request: Request) -> int:
    number = int(request.path_params["run"])
    if not 1 <= number <= MAX_NUMBER:
        raise NotFoundError(
            f"campaign {request.path_params['campaign']!r} has no run {number}"
        )
    return number


def _keep(request: Request) -> int:
    text = request.query_params.get("keep", "1")
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise BadRequest(f"keep must be a whole number from 1, not {text[:40]!r}")
    return int(text)


def _time_axis(request: Request) -> Any:
    axis = request.query_params.get("time", "wallclock")
    if axis not in TIME_AXES:
        raise BadRequest(
            f"time must be one of {', '.join(TIME_AXES)}, not {axis[:40]!r}"
        )
    return axis


def _flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name, "0").lower()
    if text not in _BOOLEANS:
        raise BadRequest(f"{name} must be 0 or 1, not {text[:40]!r}")
    return _BOOLEANS[text]


def _error(status: int, title: str, exc: Exception) -> dict[str, Any]:
    return {"status": status, "title": title, "message": str(exc)}


# -------------------------------------------------------------------- filters


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat()


def _utc_text(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(moment: datetime) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago`` (the script ticks it)."""
    seconds = max(0, int((datetime.now(timezone.utc) - _utc(moment)).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _size(count: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``, ``12.0 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


__all__ = ["POLL_MILLISECONDS", "TIMELINE_NODES", "campaign_url", "create_app"]
