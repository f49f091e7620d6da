"""``snapreg dashboard``: serve a live, read-only web page of the campaigns."""

from __future__ import annotations

import click

from snapreg.cli.options import database_option


@click.command()
@database_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Keep the default and reach it through an SSH"
    " tunnel; any other address lets whoever reaches it read every campaign.",
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8050,
    show_default=True,
    help="Port to listen on; 0 takes any free port.",
)
def dashboard(database_url: str, host: str, port: int) -> None:
    """Serve a live, read-only web page of the database's campaigns.

    Every campaign with its runs, lineage and status; its newest workflow
    snapshot, its age and whether it can be resumed from; a run's timeline, its
    workflow snapshots (each resume yMMSL to download) and why there is no newer
    one; the disk its snapshot files take and what gc would free. An open page
    follows the database as it grows. It only reads, and never holds up the
    manager that writes. Needs: pip install 'snapreg[dashboard]'.

    From a laptop: ssh -L 8050:127.0.0.1:8050 CLUSTER, then open
    http://127.0.0.1:8050/ there.
    """
    from snapreg.dashboard.server import bind, check_dependencies, is_loopback, serve

    check_dependencies()
    listener = bind(host, port)
    if not is_loopback(host):
        bound = listener.getsockname()[1]
        click.echo(
            f"snapreg: warning: listening on {host}, beyond this machine: anyone"
            f" who can reach it on port {bound} can read every campaign in the"
            " database (the dashboard has no login). To look from elsewhere, keep"
            f" --host 127.0.0.1 and tunnel: ssh -L {bound}:127.0.0.1:{bound}"
            " THIS-HOST",
            err=True,
        )

    def ready(location: str) -> None:
        from snapreg.dashboard.server import url_of

        click.echo(
            f"snapreg dashboard of {location} (read-only) at {url_of(listener)}"
            "  (Ctrl-C stops it)"
        )

    serve(database_url, listener, ready=ready)
