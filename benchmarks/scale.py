"""Scale: a registry for 50,001 instances opens and registers as one for 2 does.

A macro model drives N micro models through vector ports (the model of the
``macro_micro`` scenarios), step after step: at each step every micro registers a
final snapshot of its reuse, then the macro registers one between steps, which
completes a workflow snapshot of all N + 1 members. The registrations are written
directly (the simulated streams of ``run.py`` are quadratic in N to generate).

For N micros and for 1 (two instances), on a fresh run of a database whose schema
exists, it reports:

- *open*: seconds for ``SnapshotRegistry(...)`` to return, ready to register;
- *per registration*: microseconds per ``add_snapshot`` over every step, each
  registration its own transaction, workflow snapshot files included.

Usage::

    .venv/bin/python benchmarks/scale.py                     # 50,000 micros, 3 steps
    .venv/bin/python benchmarks/scale.py --micros 5000 --repeat 3 --postgres
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from backends import postgres_available, postgres_url, sqlite_url  # noqa: E402

from snapreg import SnapshotRegistry, upgrade_database  # noqa: E402
from snapreg.rules.metadata import SnapshotMetadata  # noqa: E402
from support.streams import macro_micro  # noqa: E402


def registrations(micros: int, steps: int) -> Iterator[tuple[str, SnapshotMetadata]]:
    """What a macro driving ``micros`` micros registers over ``steps`` steps."""
    for step in range(1, steps + 1):
        last = step == steps
        for index in range(micros):
            yield (
                f"micro[{index}]",
                SnapshotMetadata(
                    ["at_end"] if last else [f"simulation_time >= {step}"],
                    0.001 * step,
                    float(step),
                    None,
                    {"init_in": [step], "final_out": [step]},
                    True,
                    f"/run/instances/micro[{index}]/snapshots/micro-{index}_{step}.pack",
                ),
            )
        yield (
            "macro",
            SnapshotMetadata(
                ["at_end"] if last else [f"simulation_time >= {step}"],
                0.001 * step,
                float(step),
                None if last else float(step + 1),
                {
                    "state_out": [step] * micros,
                    "state_in": [step] * micros,
                    "final_state_out": [0],
                },
                last,
                f"/run/instances/macro/snapshots/macro_{step}.pack",
            ),
        )


def measure(url: str, micros: int, steps: int) -> tuple[float, float, int]:
    """(open seconds, seconds per registration, registrations) on a fresh run."""
    config = macro_micro(0, num_micro=micros, num_steps=0).config  # the model only
    upgrade_database(url)  # as for every run of a campaign but the first
    work = list(registrations(micros, steps))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        registry = SnapshotRegistry(config, Path(folder), database_url=url)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        for instance, metadata in work:
            registry.add_snapshot(instance, metadata)
        per_registration = (time.perf_counter() - start) / len(work)
        registry.close()
    return opened, per_registration, len(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micros", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--small-steps",
        type=int,
        default=2_000,
        help="steps of the two-instance run (default: 2000, 4000 registrations)",
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--postgres", action="store_true")
    arguments = parser.parse_args()

    backends = [("SQLite", sqlite_url)]
    if arguments.postgres:
        if not postgres_available():
            parser.error("PostgreSQL does not answer")
        backends.append(("PostgreSQL", postgres_url))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  scale: macro + micro[N]")
    for backend, make_url in backends:
        results = {}
        for micros, steps in (
            (1, arguments.small_steps),
            (arguments.micros, arguments.steps),
        ):
            runs = []
            for _ in range(arguments.repeat):
                with make_url() as url:
                    runs.append(measure(url, micros, steps))
            results[micros] = (
                statistics.median(run[0] for run in runs),
                statistics.median(run[1] for run in runs),
                runs[0][2],
            )
        small_open, small_cost, small_count = results[1]
        open_seconds, cost, count = results[arguments.micros]
        print(
            f"{backend}: {arguments.micros + 1} instances open in {open_seconds:.2f} s"
            f" (2 instances: {small_open:.2f} s); {cost * 1e6:.0f} µs per registration"
            f" over {count} registrations, × {cost / small_cost:.2f} the 2-instance"
            f" cost of {small_cost * 1e6:.0f} µs ({small_count} registrations);"
            f" median of {arguments.repeat}"
        )


if __name__ == "__main__":
    main()
