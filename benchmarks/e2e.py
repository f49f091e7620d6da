"""End to end: stock muscle_manager against snapreg manage on real MUSCLE3 runs.

    python benchmarks/e2e.py                # everything, about half an hour
    python benchmarks/e2e.py --quick        # ensembles of 4 only, one pair
    python benchmarks/e2e.py --quick --instances 4,25 --repeat 3
    python benchmarks/e2e.py --only "ensemble n=4" --checkpoints frequent
    python benchmarks/e2e.py --markdown out.md --json out.json

Each case is a real simulation of light checkpointing components
(``e2e_components.py``): a macro–micro model; an ensemble of N members used once
a round by a sampler (snapshots at the end of each use); and an ensemble of 4
independent members that snapshot between their steps, whose snapshots combine
into exponentially many workflow snapshots under policy "all". Checkpoints come
every simulated second (frequent) or every 10 (rare). Each case is run by the
stock ``muscle_manager`` and by ``snapreg manage`` on SQLite and on PostgreSQL
(when the server answers) with policy "all" and "latest", one after the other:
that is one pair, repeated ``--repeat`` times. Reported are medians over the
pairs, and the median of the per-pair ratios to stock. What is measured and how
is described in ``e2e_runs.py``; see docs/performance.md for results.

Timing goals live here, never in the test suite: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from backends import postgres_available, postgres_url, sqlite_url
from e2e_runs import Case, Measurement, Setup, run_once, startup_cost

from snapreg.storage.engines import create_database_engine
from snapreg.storage.versions import ensure_schema

ROOT = Path(__file__).resolve().parent.parent
STOCK = Setup("stock")
#: The registration latency target: p99 on SQLite, 100 instances at once.
LATENCY_TARGET = 0.005
WALL_TARGET = 1.05

Results = dict[tuple[Case, Setup], list[Measurement]]


def cases(
    quick: bool, instances: list[int] | None, checkpoints: list[str]
) -> list[Case]:
    """The cases to run, in order.

    Policy "latest" is run with frequent checkpoints only (with rare ones there
    is little to choose from), and rare checkpoints are left out for ensembles of 100 or more, whose runs take
    a minute each (a run is mostly the starting of 100 Python processes), so
    that the full mode stays near half an hour. The independent ensemble has 4
    members whatever ``instances`` says: with more, policy "all" has more
    workflow snapshots to write than any run could.
    """
    sizes = instances or ([4] if quick else [4, 25, 100])
    result = [Case("macro_micro", 1, every) for every in checkpoints]
    for size in sizes:
        result += [
            Case("ensemble", size, every)
            for every in checkpoints
            if every == "frequent" or size < 100
        ]
    if "frequent" in checkpoints:
        result.append(Case("independent", 4, "frequent"))
    return result


def setups(backends: list[str], policies: list[str]) -> list[Setup]:
    """One pair: stock first, then snapreg, SQLite before PostgreSQL."""
    chosen = [STOCK] if "stock" in backends else []
    for policy in policies:
        chosen += [
            Setup(backend, policy)
            for backend in ("sqlite", "postgresql")
            if backend in backends
        ]
    return chosen


def schema_seconds(backends: list[str]) -> dict[str, float]:
    """Seconds to create snapreg's schema in an empty database, per backend."""
    timings = {}
    for backend, name, make_url in (
        ("sqlite", "SQLite", sqlite_url),
        ("postgresql", "PostgreSQL", postgres_url),
    ):
        if backend not in backends:
            continue
        with make_url() as url:
            engine = create_database_engine(url)
            start = time.perf_counter()
            ensure_schema(engine)
            timings[name] = time.perf_counter() - start
            engine.dispose()
    return timings


# --------------------------------------------------------------------- numbers


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of the samples."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def median_ratio(
    runs: list[Measurement], stock: list[Measurement], attribute: str
) -> float | None:
    """The median over pairs of this setup's value over stock's."""
    ratios = [
        getattr(ours, attribute) / getattr(theirs, attribute)
        for ours, theirs in zip(runs, stock, strict=False)
        if getattr(theirs, attribute) > 0
    ]
    return statistics.median(ratios) if ratios else None


def latency(runs: list[Measurement], fraction: float) -> float | None:
    """The median over runs of the runs' registration latency percentile."""
    values = [
        percentile(run.registrations, fraction) for run in runs if run.registrations
    ]
    return statistics.median(values) if values else None


def stock_intact(runs: list[Measurement]) -> bool:
    """Whether stock completed every run without losing its registry."""
    return all(run.completed and not run.registry_died for run in runs)


# ---------------------------------------------------------------------- output


def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(results: Results) -> list[str]:
    """The results as markdown table lines."""
    lines = [
        "| case | checkpoints | manager | completed | wall s | × stock | manager"
        " CPU s | × stock | peak MiB | × stock | workflow snapshots | registry"
        " died | registration p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, setup), runs in results.items():
        stock = results.get((case, STOCK), [])
        is_stock = setup == STOCK
        counts = sorted(run.workflow_snapshots for run in runs)
        snapshots = (
            str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"
        )
        completed = sum(run.completed for run in runs)
        timed_out = sum(run.status is None for run in runs)
        p50, p99 = latency(runs, 0.5), latency(runs, 0.99)
        cells = [
            case.name,
            case.checkpoints,
            setup.name,
            f"{completed}/{len(runs)}"
            + (f" ({timed_out} timed out)" if timed_out else ""),
            _number(statistics.median(run.wall for run in runs)),
            "" if is_stock else _ratio(median_ratio(runs, stock, "wall")),
            _number(statistics.median(run.cpu for run in runs), 2),
            "" if is_stock else _ratio(median_ratio(runs, stock, "cpu")),
            _number(statistics.median(run.peak for run in runs), 0),
            "" if is_stock else _ratio(median_ratio(runs, stock, "peak")),
            snapshots,
            f"{sum(run.registry_died for run in runs)}/{len(runs)}",
            "" if p50 is None or p99 is None else f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(results: Results) -> list[str]:
    """The end-to-end targets (docs/performance.md) against these results, as markdown."""
    lines = ["| target | manager | result |", "|---|---|---|"]
    ours = sorted({setup for _, setup in results if setup != STOCK}, key=str)
    for setup in ours:
        checked = []
        for (case, other), runs in results.items():
            stock = results.get((case, STOCK), [])
            if other != setup or not stock or not stock_intact(stock):
                continue
            ratio = median_ratio(runs, stock, "wall")
            if ratio is not None:
                checked.append((ratio, f"{case.name} {case.checkpoints}"))
        lines.append(
            _verdict(f"wall ≤ {WALL_TARGET} × stock", setup, checked, WALL_TARGET)
        )
    for setup in ours:
        checked = []
        for (case, other), runs in results.items():
            ratio = median_ratio(runs, results.get((case, STOCK), []), "peak")
            if other == setup and ratio is not None:
                checked.append((ratio, f"{case.name} {case.checkpoints}"))
        lines.append(_verdict("peak memory ≤ stock's", setup, checked, 1.0))
    for (case, setup), runs in results.items():
        if case.model != "ensemble" or case.checkpoints != "frequent":
            continue
        if setup.backend != "sqlite":
            continue
        p99 = latency(runs, 0.99)
        stock_p99 = latency(results.get((case, STOCK), []), 0.99)
        if p99 is None:
            continue
        if case.members >= 100:
            verdict = "**met**" if p99 <= LATENCY_TARGET else "**missed**"
        else:
            verdict = "not the target's size:"
        lines.append(
            f"| registration p99 ≤ {LATENCY_TARGET * 1e3:.0f} ms, 100 instances at once"
            f" | {setup.name} | {verdict} {p99 * 1e3:.1f} ms at {case.name}"
            + ("" if stock_p99 is None else f" (stock: {stock_p99 * 1e3:.1f} ms)")
            + " |"
        )
    return lines


def _verdict(
    target: str, setup: Setup, checked: list[tuple[float, str]], limit: float
) -> str:
    if not checked:
        return f"| {target} | {setup.name} | no case to judge |"
    met = sum(ratio <= limit for ratio, _ in checked)
    worst_ratio, worst_case = max(checked)
    verdict = "met" if met == len(checked) else "missed"
    return (
        f"| {target} | {setup.name} | **{verdict}**: met in {met} of {len(checked)}"
        f" cases; highest × {worst_ratio:.2f} ({worst_case}) |"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------ main


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=4 only, one pair")
    parser.add_argument("--repeat", type=int, help="pairs (default 3; --quick: 1)")
    parser.add_argument("--instances", help="ensemble sizes, e.g. 4,25,100")
    parser.add_argument("--checkpoints", default="rare,frequent")
    parser.add_argument("--policies", default="all,latest")
    parser.add_argument("--backends", default="stock,sqlite,postgresql")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--only", default="", help="cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="s per run")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path, help="every measurement, for scripts")
    arguments = parser.parse_args()
    repeat = arguments.repeat or (1 if arguments.quick else 3)
    backends = _list(arguments.backends)
    if "postgresql" in backends and (arguments.no_postgres or not postgres_available()):
        backends.remove("postgresql")
    chosen_cases = [
        case
        for case in cases(
            arguments.quick,
            [int(size) for size in _list(arguments.instances or "")] or None,
            _list(arguments.checkpoints),
        )
        if arguments.only in f"{case.name} {case.checkpoints}"
    ]
    chosen_setups = setups(backends, _list(arguments.policies))
    workspace = arguments.keep or Path(tempfile.mkdtemp(prefix="snapreg-e2e-"))
    started, begun = time.monotonic(), datetime.now()
    load = os.getloadavg()[0]
    results: Results = {}
    fixed: dict[str, list[tuple[float, float, float]]] = {}
    try:
        startups = [("stock muscle_manager", STOCK, "stock" in backends)]
        snapreg = bool({"sqlite", "postgresql"} & set(backends))
        startups.append(("snapreg manage", Setup("sqlite"), snapreg))
        for pair in range(repeat):
            for label, setup, wanted in startups:
                if wanted:
                    folder = workspace / "startup" / f"{setup.backend}-{pair}"
                    fixed.setdefault(label, []).append(startup_cost(setup, folder))
        for case in chosen_cases:
            for pair in range(repeat):
                for setup in chosen_setups:
                    if setup.policy == "latest" and case.checkpoints == "rare":
                        continue  # little to choose from; keeps the time down
                    folder = (
                        workspace / f"{case.model}-{case.members}-{case.checkpoints}"
                    )
                    folder = folder / f"{setup.backend}-{setup.policy}-{pair}"
                    run = run_once(case, setup, folder, arguments.timeout)
                    results.setdefault((case, setup), []).append(run)
                    print(
                        f"{case.name} {case.checkpoints}, {setup.name}, pair"
                        f" {pair + 1}: status {run.status}, {run.wall:.1f} s,"
                        f" {run.cpu:.2f} s CPU, {run.peak:.0f} MiB,"
                        f" {run.workflow_snapshots} workflow snapshots"
                        + (", registry died" if run.registry_died else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    if arguments.keep is None:
                        shutil.rmtree(folder)
    finally:
        if arguments.keep is None:
            shutil.rmtree(workspace, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    lines = [
        f"snapreg end-to-end benchmark, started {begun:%Y-%m-%d %H:%M},"
        f" {os.cpu_count()} cores, load average {load:.1f} at the start and"
        f" {os.getloadavg()[0]:.1f} at the end, muscle3 {version('muscle3')},"
        f" commit {_commit()}; {repeat} pair(s), {minutes:.0f} minutes",
        "",
        "Fixed cost: the manager stopping on a usage error (after its imports,"
        " before any instance or database), median of"
        f" {repeat}: "
        + "; ".join(
            f"{name} {statistics.median(c[0] for c in costs):.2f} s wall,"
            f" {statistics.median(c[1] for c in costs):.2f} s CPU,"
            f" {statistics.median(c[2] for c in costs):.0f} MiB"
            for name, costs in fixed.items()
        )
        + ".",
        "",
        *table(results),
        "",
        *targets(results),
    ]
    schema = schema_seconds(backends)
    lines += [
        "",
        "Not in the wall times: creating snapreg's schema in an empty database, as"
        " a campaign's first run does: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in schema.items())
        + ".",
    ]
    print("\n".join(lines))
    if arguments.markdown:
        arguments.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if arguments.json:
        arguments.json.write_text(
            json.dumps(
                [
                    {
                        "case": asdict(case),
                        "name": case.name,
                        "setup": asdict(setup),
                        "manager": setup.name,
                        "runs": [asdict(run) for run in runs],
                    }
                    for (case, setup), runs in results.items()
                ],
                indent=1,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
