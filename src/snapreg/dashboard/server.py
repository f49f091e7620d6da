"""Running the dashboard: the listening socket, the server, and its address.

The socket is bound before the server starts, so that the address printed is the
one really listened on (``--port 0`` takes any free port) and a port already in
use is one error line, not a server that never answers. uvicorn serves the app on
it until it is stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from importlib import import_module

from snapreg.errors import SnapregError

INSTALL_HINT = "pip install 'snapreg[dashboard]'"
#: What the dashboard needs beyond snapreg itself: the ``dashboard`` extra.
REQUIRED_MODULES = ("starlette", "uvicorn", "jinja2", "matplotlib")


class DashboardDependencyError(SnapregError):
    """``snapreg dashboard`` was called without the ``dashboard`` extra."""


def check_dependencies() -> None:
    """Refuse to start without the web stack.

    Raises:
        DashboardDependencyError: naming what is missing and how to install it.
    """
    missing = []
    for name in REQUIRED_MODULES:
        try:
            import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DashboardDependencyError(
            f"snapreg dashboard needs {', '.join(missing)}; install them with:"
            f" {INSTALL_HINT}"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost).

    A name is resolved: it is loopback only when every address it has is.
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(address[4][0]).split("%")[0]).is_loopback
        for address in found
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` and ``port`` (0: any free port).

    Raises:
        OSError: the address cannot be used (in use, not this machine's, ...).
    """
    family, kind, protocol, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
        listener.set_inheritable(True)
    except BaseException:
        listener.close()
        raise
    return listener


def url_of(listener: socket.socket) -> str:
    """The URL a browser on this machine opens for a listening socket."""
    host, port = listener.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def serve(
    database_url: str,
    listener: socket.socket,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of a database on a bound socket until stopped.

    Args:
        database_url: SQLAlchemy URL of the database; opened read-only.
        listener: A socket from :func:`bind`; closed when the server stops.
        ready: Called with the database's location once it is open and the
            server is about to answer.

    Raises:
        DashboardDependencyError: the ``dashboard`` extra is missing.
        NotFoundError: no database (or no snapreg schema) there.
        SnapregError: the database cannot be read.
    """
    check_dependencies()
    import uvicorn

    from snapreg.dashboard.app import create_app
    from snapreg.dashboard.pages import DashboardData

    try:
        with DashboardData(database_url) as data:
            config = uvicorn.Config(
                create_app(data),
                log_level="warning",
                access_log=False,
                lifespan="off",
                # pages are read in worker threads; keep a slow one from piling up
                limit_concurrency=64,
            )
            if ready is not None:
                ready(data.location)
            uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
