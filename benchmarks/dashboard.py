"""How fast `snapreg dashboard` answers on a campaign with a million retired nodes.

    python benchmarks/dashboard.py                   # 1,000,000 retired nodes
    python benchmarks/dashboard.py --retired 100000 --repeat 5
    python benchmarks/dashboard.py --keep            # keep the database, print its URL

The campaign is written as benchmarks/run.py writes its history scenario: a
registry runs a macro with ten micros, a million retired nodes (each naming a
snapshot file of its own, none of them on disk) and their consistent pairs are
then inserted as rows into that same run, as the registry would have left them,
and the registry goes on registering, so that the run's newest workflow
snapshots and active nodes come after the history. The database is a SQLite file.

The dashboard then runs as `snapreg dashboard` runs it (uvicorn on a socket of
127.0.0.1, in a thread of this process), and every route is fetched over HTTP
``--repeat`` times; the table gives the first fetch and the median. A page is the
HTML a browser loads first; the timeline and the disk figures are what the page
fetches after it is shown (the timeline once per state of the run).

Timing goals live here, never in the test suite: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from backends import add_retired_history  # noqa: E402

from snapreg import SnapshotRegistry  # noqa: E402
from snapreg.rules.metadata import coerce_metadata  # noqa: E402
from support.streams import macro_micro  # noqa: E402

CAMPAIGN = "big"
#: What the page must load in: under a second on a million retired nodes.
PAGE_GOAL = 1.0


def build(url: str, retired: int) -> None:
    """A campaign whose one run has ``retired`` retired nodes amid real ones."""
    stream = macro_micro(4, num_micro=10, num_steps=40, micro_intermediate=False)
    registrations = [
        (instance, coerce_metadata(fields)) for instance, fields in stream.registrations
    ]
    half = len(registrations) // 2
    with SnapshotRegistry(
        stream.config, None, database_url=url, campaign=CAMPAIGN
    ) as registry:
        for instance, data in registrations[:half]:
            registry.add_snapshot(instance, data)
        run_id = registry.run_id
    add_retired_history(url, run_id, retired)
    with SnapshotRegistry(
        stream.config, None, database_url=url, campaign=CAMPAIGN
    ) as registry:
        for instance, data in registrations[half:]:
            registry.add_snapshot(instance, data)


class Server:
    """The dashboard on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, url: str) -> None:
        import uvicorn

        from snapreg.dashboard.app import create_app
        from snapreg.dashboard.pages import DashboardData
        from snapreg.dashboard.server import bind, url_of

        self.data = DashboardData(url)
        self.listener = bind("127.0.0.1", 0)
        self.base = url_of(self.listener).rstrip("/")
        config = uvicorn.Config(
            create_app(self.data), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard did not start")
            time.sleep(0.05)

    def fetch(self, path: str) -> tuple[float, int]:
        """Seconds to fetch ``path`` whole, and its size."""
        start = time.perf_counter()
        with urllib.request.urlopen(self.base + path, timeout=600) as answer:
            body = answer.read()
            if answer.status != 200:
                raise SystemExit(f"{path}: status {answer.status}")
        return time.perf_counter() - start, len(body)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.data.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retired", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    arguments = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="snapreg-dashboard-bench-"))
    url = f"sqlite:///{folder / 'big.sqlite'}"
    started = time.perf_counter()
    build(url, arguments.retired)
    print(
        f"snapreg dashboard benchmark, {datetime.now():%Y-%m-%d %H:%M},"
        f" {os.cpu_count()} cores: campaign with {arguments.retired:,} retired nodes"
        f" built in {time.perf_counter() - started:.0f} s"
        f" ({(folder / 'big.sqlite').stat().st_size / 2**20:.0f} MiB SQLite file)",
        flush=True,
    )
    server = Server(url)
    routes: list[tuple[str, str]] = [
        ("campaign page (HTML)", f"/campaigns/{CAMPAIGN}"),
        ("overview (HTML)", "/"),
        ("run page (HTML)", f"/campaigns/{CAMPAIGN}/runs/1"),
        ("live state (/api/state)", "/api/state"),
        (
            "timeline SVG (newest 3000 nodes)",
            f"/campaigns/{CAMPAIGN}/runs/1/timeline.svg",
        ),
        ("disk figures (stats every file)", f"/campaigns/{CAMPAIGN}/disk?keep=1"),
    ]
    print()
    print("| route | first fetch (s) | median (s) | size |")
    print("|---|---|---|---|")
    results: dict[str, Any] = {}
    try:
        for label, path in routes:
            times = []
            size = 0
            for _ in range(arguments.repeat):
                seconds, size = server.fetch(path)
                times.append(seconds)
            median = statistics.median(times)
            results[label] = median
            print(
                f"| {label} | {times[0]:.3f} | {median:.3f} | {size / 1024:.0f} KiB |",
                flush=True,
            )
    finally:
        server.stop()
    page = results["campaign page (HTML)"]
    print()
    print(
        f"campaign page: median {page:.3f} s over {arguments.repeat} loads;"
        f" goal < {PAGE_GOAL:.1f} s: {'met' if page < PAGE_GOAL else 'NOT met'}"
    )
    if arguments.keep:
        print(f"database kept: {url}")
    else:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
