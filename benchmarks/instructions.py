"""Machine instructions per registration, counted by callgrind: a measure load does not move.

    python benchmarks/instructions.py                       # macro_micro n=1000, SQLite
    python benchmarks/instructions.py --against ba2fe1b     # and a commit, same stream
    python benchmarks/instructions.py --only "chain k=10" --only "near-miss n=10"
    python benchmarks/instructions.py --all --against ba2fe1b   # run.py's table
    python benchmarks/instructions.py --postgresql --against ba2fe1b

On a shared two-core machine a registration's wall-clock and CPU time move by 5
to 30 % from one minute to the next, so medians of a few replays cannot tell a
change of a few per cent. Callgrind (a valgrind tool) counts the instructions
the process runs in user space. Counting starts just before the replay's first
registration and stops after its last (``callgrind_control`` switches it), so
imports, the stream and opening the registry are left out. The same replay gives
the same count within about 0.5 %, and two checkouts can be compared at once.

It replays the scenarios of ``benchmarks/run.py`` into ``add_snapshot`` on a
fresh SQLite file, as ``run.py`` does. ``--against REV`` replays the same stream
into a checkout of that commit, made with ``git worktree`` and removed
afterwards; that checkout's own code coerces the metadata and registers it.

What it leaves out: time in the kernel (SQLite's writes to its files), cache
misses and other stalls, and the database server: with ``--postgresql`` (a
database on the local test server for each replay, dropped after it) it counts
the registering process, psycopg included, and not the server. It measures the
Python and SQLite work a registration does in the registering process, which is
the part this project's code decides. Each replay runs about 50 times slower than
natively: about a minute for macro_micro n=1000. Needs valgrind
(``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = "macro_micro n=1000"
_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)", re.MULTILINE)


@dataclass
class Count:
    """One replay under callgrind."""

    checkout: str
    registrations: int
    workflow_snapshots: int
    instructions: int

    @property
    def per_registration(self) -> float:
        return self.instructions / self.registrations


def collected_instructions(valgrind_log: str) -> int:
    """The instructions callgrind counted, from its log.

    Raises:
        RuntimeError: none were counted (counting was never switched on).
    """
    found = _COLLECTED.findall(valgrind_log)
    if not found or int(found[-1]) == 0:
        raise RuntimeError(
            "callgrind counted no instructions: was callgrind_control able to"
            f" switch counting on?\n{valgrind_log[-2000:]}"
        )
    return int(found[-1])


def replay_under_callgrind(
    checkout: Path, label: str, payload: Path, scratch: Path, url: str | None = None
) -> Count:
    """Replay the pickled stream into ``checkout``'s registry under callgrind.

    On ``url`` (an empty database), or a fresh SQLite file when None.
    """
    log = scratch / f"{label}.valgrind.log"
    result = scratch / f"{label}.json"
    environment = {
        **os.environ,
        "PYTHONPATH": str(checkout / "src"),
        "PYTHONHASHSEED": "0",  # the same dictionaries in every run
    }
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={scratch / label}.callgrind",
        f"--log-file={log}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(payload),
        str(result),
        url or "",
    ]
    subprocess.run(command, check=True, env=environment, cwd=scratch)
    replayed = json.loads(result.read_text())
    return Count(
        label,
        replayed["registrations"],
        replayed["workflow_snapshots"],
        collected_instructions(log.read_text()),
    )


def child(payload: Path, result: Path, url: str) -> None:
    """In the process callgrind runs: replay, counting only the registrations."""
    import gc

    import ymmsl

    import snapreg
    from snapreg import SnapshotRegistry

    # the checkout's own coercion (its module moved in the project's history)
    moved = (Path(snapreg.__file__).parent / "rules" / "metadata.py").exists()
    coerce_metadata = importlib.import_module(
        "snapreg.rules.metadata" if moved else "snapreg.metadata"
    ).coerce_metadata

    stream: dict[str, Any] = pickle.loads(payload.read_bytes())
    config = ymmsl.load(stream["ymmsl"])
    registrations = [(name, coerce_metadata(data)) for name, data in stream["items"]]
    found = 0
    with tempfile.TemporaryDirectory() as folder:
        url = url or f"sqlite:///{folder}/instructions.sqlite"
        with SnapshotRegistry(
            config, None, database_url=url, policy=stream["policy"]
        ) as registry:
            gc.collect()
            _count(True)
            for name, metadata in registrations:
                found += len(registry.add_snapshot(name, metadata))
            _count(False)
    result.write_text(
        json.dumps({"registrations": len(registrations), "workflow_snapshots": found})
    )


def _count(on: bool) -> None:
    """Switch callgrind's counting on or off for this process."""
    switched = subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        capture_output=True,
        text=True,
    )
    if switched.returncode != 0:
        raise RuntimeError(f"callgrind_control failed: {switched.stderr}")


def write_payload(scenario: Any, path: Path) -> None:
    """The stream, as plain data any checkout's code can read."""
    import ymmsl

    path.write_bytes(
        pickle.dumps(
            {
                "ymmsl": ymmsl.dump(scenario.stream.config),
                "items": list(scenario.stream.registrations),
                "policy": scenario.policy,
            }
        )
    )


def add_worktree(revision: str, scratch: Path) -> Path:
    """A checkout of ``revision`` (removed with :func:`remove_worktree`)."""
    where = scratch / f"checkout-{revision}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where)]
        + [revision],
        check=True,
    )
    return where


def remove_worktree(where: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        help=f"a scenario of run.py, by its exact name (default: {DEFAULT_SCENARIO});"
        " may be given several times",
    )
    parser.add_argument(
        "--all", action="store_true", help="every scenario of run.py (some minutes)"
    )
    parser.add_argument("--against", help="also replay into this commit's code")
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="replay on PostgreSQL (the local test server) instead of SQLite; the"
        " registering process is counted, the server is not",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        payload, result, url = arguments.child
        child(Path(payload), Path(result), url)
        return 0
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install valgrind)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import scenarios

    wanted = arguments.only or [DEFAULT_SCENARIO]
    chosen = [
        scenario
        for scenario in scenarios(False)
        if arguments.all or scenario.name in wanted
    ]
    unknown = set(wanted) - {scenario.name for scenario in chosen}
    if unknown:
        names = ", ".join(scenario.name for scenario in scenarios(False))
        parser.error(f"no scenario {sorted(unknown)}; run.py has: {names}")
    # a stopped run still removes the checkout it made (see the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        checkouts = [("this checkout", ROOT)]
        if arguments.against:
            checkouts.append(
                (arguments.against, add_worktree(arguments.against, scratch))
            )
        try:
            return _report(chosen, checkouts, scratch, arguments.postgresql)
        finally:
            for _, where in checkouts[1:]:
                remove_worktree(where)


def _report(
    chosen: list[Any],
    checkouts: list[tuple[str, Path]],
    scratch: Path,
    postgresql: bool,
) -> int:
    from backends import postgres_url

    header = "| scenario | registrations | " + " | ".join(
        f"{label}: instructions a registration" for label, _ in checkouts
    )
    if len(checkouts) > 1:
        header += " | ×"
    print(header + " |", flush=True)
    print("|" + "---|" * header.count("|"), flush=True)
    for number, scenario in enumerate(chosen):
        payload = scratch / f"stream{number}.pickle"
        write_payload(scenario, payload)
        with ExitStack() as databases:
            urls = [
                databases.enter_context(postgres_url()) if postgresql else None
                for _ in checkouts
            ]
            # two cores: the checkouts replay side by side
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [
                    pool.submit(
                        replay_under_callgrind,
                        where,
                        f"s{number}c{index}",
                        payload,
                        scratch,
                        url,
                    )
                    for index, ((_, where), url) in enumerate(
                        zip(checkouts, urls, strict=True)
                    )
                ]
                counts = [future.result() for future in futures]
        if len({count.workflow_snapshots for count in counts}) > 1:
            found = {
                label: c.workflow_snapshots
                for (label, _), c in zip(checkouts, counts, strict=True)
            }
            raise SystemExit(f"{scenario.name}: the checkouts disagree: {found}")
        cells = [scenario.name, str(counts[0].registrations)]
        cells += [f"{count.per_registration:,.0f}" for count in counts]
        if len(counts) > 1:
            cells.append(
                f"{counts[0].per_registration / counts[1].per_registration:.3f}"
            )
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
