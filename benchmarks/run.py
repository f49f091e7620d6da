"""snapreg against MUSCLE3's in-memory registry: one command, one table.

    python benchmarks/run.py                  # everything (several minutes)
    python benchmarks/run.py --quick          # smaller scenarios, one repeat
    python benchmarks/run.py --only macro_micro --repeat 5
    python benchmarks/run.py --markdown out.md
    python benchmarks/run.py --only retention --history 0 --retention 10000

Every scenario replays the same generated stream of registrations into MUSCLE3's
registry (muscle3 0.11.0, in memory, driven synchronously as in the tests, no files)
and into snapreg (``add_snapshot``, no files either, so both do the same work: find
and record workflow snapshots), in one process, one after the other. Times are per
registration: the median over ``--repeat`` replays of (replay time / registrations).
snapreg runs on a SQLite file with its default durability and, when the server
answers, on PostgreSQL (a database created and dropped by the benchmark).

The floor is the cost of a bare SQLAlchemy Core insert of a node row and an edge row
plus a commit on the same kind of database: what any durable registry pays.

Timing goals live here, never in the test suite: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from backends import (  # noqa: E402
    add_retired_history,
    postgres_available,
    postgres_url,
    sqlite_url,
)
from sqlalchemy import insert  # noqa: E402

from snapreg import SnapshotRegistry  # noqa: E402
from snapreg.rules.metadata import SnapshotMetadata, coerce_metadata  # noqa: E402
from snapreg.storage import schema  # noqa: E402
from snapreg.storage.engines import create_database_engine, writer  # noqa: E402
from snapreg.storage.versions import ensure_schema  # noqa: E402
from support.streams import (  # noqa: E402
    Stream,
    chain,
    ensemble,
    macro_micro,
    near_miss,
)


@dataclass
class Scenario:
    """A named stream and which registries can replay it in reasonable time."""

    name: str
    stream: Stream
    instances: int
    muscle3: bool = True
    policy: str = "all"
    note: str = ""


@dataclass
class Result:
    """Per-registration times of one scenario, in microseconds."""

    scenario: Scenario
    registrations: int
    workflow_snapshots: int
    times: dict[str, float] = field(default_factory=dict)


def scenarios(quick: bool) -> list[Scenario]:
    """The registry scenarios (docs/performance.md), smaller with ``quick``."""
    sizes = [1, 10, 100] if quick else [1, 10, 100, 1000, 2000]
    steps = 3
    result = []
    for size in sizes:
        stream = macro_micro(
            0,
            num_micro=size,
            num_steps=steps if size >= 100 else 40,
            micro_intermediate=False,
            macro_intermediate=True,
        )
        result.append(Scenario(f"macro_micro n={size}", stream, size + 1))
    # intermediate snapshots: every micro has several candidates per macro step,
    # and the number of consistent combinations grows as 2**n
    for size in [1, 5, 10]:
        stream = macro_micro(0, num_micro=size, num_steps=4 if size == 10 else 20)
        result.append(Scenario(f"macro_micro n={size} +intermediate", stream, size + 1))
    for size in [20] if quick else [20, 100]:
        stream = macro_micro(0, num_micro=size, num_steps=4)
        result.append(
            Scenario(
                f"macro_micro n={size} +intermediate",
                stream,
                size + 1,
                muscle3=False,
                policy="latest",
                note="policy=latest; MUSCLE3 would write ~2^n per step",
            )
        )
    result.append(
        Scenario(
            "ensemble driver+lb n=20",
            ensemble(0, num_models=20, num_samples=200, num_rounds=3),
            22,
        )
    )
    result.append(Scenario("chain k=10", chain(0, length=10, num_steps=100), 10))
    base = macro_micro(1, num_micro=10, num_steps=40, micro_intermediate=False)
    result.append(
        Scenario("near-miss n=10", near_miss(base, 1, num_perturbations=30), 11)
    )
    return result


# ------------------------------------------------------------------- the replays


def _metadata(stream: Stream) -> list[tuple[str, SnapshotMetadata]]:
    return [
        (instance, coerce_metadata(data)) for instance, data in stream.registrations
    ]


def replay_muscle3(stream: Stream) -> tuple[float, int]:
    """Seconds to replay the stream into MUSCLE3's registry, and snapshots found."""
    import queue

    from libmuscle.manager.snapshot_registry import SnapshotRegistry as Muscle3Registry
    from libmuscle.manager.topology_store import TopologyStore
    from libmuscle.snapshot import SnapshotMetadata as Muscle3Metadata
    from ymmsl.v0_2 import Reference

    registry = Muscle3Registry(stream.config, Path("."), TopologyStore(stream.config))
    found = [0]

    def count(nodes: Any) -> None:
        found[0] += 1

    registry._write_snapshot_ymmsl = count  # type: ignore[method-assign]
    while True:
        try:
            item = registry._queue.get_nowait()
        except queue.Empty:
            break
        registry._add_snapshot(*item)  # restart nodes, before the clock starts
    registrations = [
        (Reference(instance), Muscle3Metadata(**data))
        for instance, data in stream.registrations
    ]
    gc.collect()
    start = time.perf_counter()
    for instance, data in registrations:
        registry._add_snapshot(instance, data)
    return time.perf_counter() - start, found[0]


def replay_snapreg(stream: Stream, url: str, policy: str) -> tuple[float, int]:
    """Seconds to replay the stream into snapreg at ``url``, and snapshots found."""
    registrations = _metadata(stream)
    with SnapshotRegistry(
        stream.config,
        None,
        database_url=url,
        policy=policy,  # type: ignore[arg-type]
    ) as registry:
        gc.collect()
        start = time.perf_counter()
        found = 0
        for instance, data in registrations:
            found += len(registry.add_snapshot(instance, data))
        return time.perf_counter() - start, found


def floor(url: str, count: int = 2000) -> float:
    """Seconds per bare Core insert of a node row and an edge row plus a commit."""
    engine = create_database_engine(url)
    # as a registry opens its database: the schema, and SQLite's WAL mode
    ensure_schema(engine, upgrade=True)
    now = datetime.now(timezone.utc)
    node_table = schema.SnapshotNodeRow.__table__
    edge_table = schema.ConsistentPairRow.__table__
    with writer(engine).begin() as connection:
        campaign = connection.execute(
            insert(schema.CampaignRow.__table__).returning(
                schema.CampaignRow.__table__.c.id
            ),
            {"name": f"floor-{uuid.uuid4().hex}", "created_at": now},
        ).scalar_one()
        run = connection.execute(
            insert(schema.RunRow.__table__).returning(schema.RunRow.__table__.c.id),
            {
                "campaign_id": campaign,
                "number": 1,
                "model_name": "m",
                "topology": "",
                "configuration": "",
                "started_at": now,
            },
        ).scalar_one()

    def row(num: int) -> dict[str, Any]:
        return {
            "run_id": run,
            "instance": "micro[0]",
            "num": num,
            "is_restart": False,
            "triggers": ["t"],
            "wallclock_time": 1.0,
            "simulation_time": 1.0,
            "next_simulation_time": None,
            "port_message_counts": {"f_i": [num]},
            "is_final": False,
            "snapshot_filename": "/x",
            "registered_at": now,
        }

    write = writer(engine)
    with write.begin() as connection:
        first = connection.execute(
            insert(node_table).returning(node_table.c.id), row(1)
        ).scalar_one()
    start = time.perf_counter()
    for num in range(2, count + 2):
        with write.begin() as connection:
            node = connection.execute(
                insert(node_table).returning(node_table.c.id), row(num)
            ).scalar_one()
            connection.execute(
                insert(edge_table), {"lower_node_id": first, "higher_node_id": node}
            )
    elapsed = (time.perf_counter() - start) / count
    engine.dispose()
    return elapsed


# ------------------------------------------------------------------------ timing


def median_time(
    repeat: int, replay: Callable[[], tuple[float, int]]
) -> tuple[float, int]:
    runs = [replay() for _ in range(repeat)]
    return statistics.median(seconds for seconds, _ in runs), runs[0][1]


# ---------------------------------------------------------- group commit, history


def group_commit(
    url: str, total: int = 10_000, threads: int = 8
) -> tuple[float, float, int]:
    """Seconds for ``threads`` threads to register ``total`` snapshots, all processed.

    Returns:
        The wall-clock seconds, the process's CPU seconds meanwhile (all threads),
        and the number of registrations.

    Each thread is one instance of a macro with seven micros; register_snapshot
    returns only after its submission is committed.
    """
    stream = macro_micro(
        2,
        num_micro=threads - 1,
        num_steps=total // threads + 1,
        micro_intermediate=False,
        macro_intermediate=True,
    )
    per_instance: dict[str, list[SnapshotMetadata]] = {}
    for instance, data in _metadata(stream):
        per_instance.setdefault(instance, []).append(data)
    budget = total // len(per_instance)
    work = {name: items[:budget] for name, items in per_instance.items()}
    registry = SnapshotRegistry(stream.config, None, database_url=url)
    registry.start()
    barrier = threading.Barrier(len(work) + 1)

    def register(instance: str, items: list[SnapshotMetadata]) -> None:
        barrier.wait()
        for data in items:
            registry.register_snapshot(instance, data)

    workers = [
        threading.Thread(target=register, args=(name, items))
        for name, items in work.items()
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()
    for worker in workers:
        worker.join()
    while registry.pending_count():
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    registry.shutdown()
    registry.join()
    registry.close()
    return elapsed, cpu, sum(len(items) for items in work.values())


def history(url: str, retired: int) -> tuple[float, float, float, float]:
    """Registration cost and memory in a fresh run versus one with retired history.

    The history is written as rows (as the registry would have left them: retired
    nodes with their edges) in the run the registry then continues.

    Returns:
        (fresh seconds/registration, with-history seconds/registration,
        fresh MiB allocated while opening, with-history MiB allocated while opening)
    """
    import tracemalloc

    stream = macro_micro(4, num_micro=10, num_steps=40, micro_intermediate=False)
    registrations = _metadata(stream)

    def measure(campaign: str) -> tuple[float, float]:
        tracemalloc.start()
        registry = SnapshotRegistry(
            stream.config, None, database_url=url, campaign=campaign
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        start = time.perf_counter()
        for instance, data in registrations:
            registry.add_snapshot(instance, data)
        seconds = (time.perf_counter() - start) / len(registrations)
        registry.close()
        return seconds, peak / 2**20

    measure("warm-up")  # first-use costs (compiling statements) are not history's
    fresh = measure("fresh")
    with SnapshotRegistry(
        stream.config, None, database_url=url, campaign="old"
    ) as registry:
        run_id = registry.run_id
    add_retired_history(url, run_id, retired)
    old = measure("old")
    return fresh[0], old[0], fresh[1], old[1]


def retention_pass(url: str, steps: int) -> tuple[int, float, float, float]:
    """How long a pass of ``snapreg manage --keep 2`` takes on a long campaign.

    A macro and ten micros, ``steps`` checkpoints, every snapshot a real file in
    a run directory laid out as MUSCLE3 lays it out.

    Returns:
        (nodes, seconds of the first pass, which deletes nearly every file,
        seconds of a pass with nothing left to delete, the steady state of a
        long retained run, seconds of that pass's plan alone)
    """
    from snapreg.tools.gc import plan_cleanup
    from snapreg.tools.gc_delete import delete_files
    from snapreg.tools.gc_read import LiveRun

    stream = macro_micro(5, num_micro=10, num_steps=steps, micro_intermediate=False)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        (run_dir / "snapshots").mkdir(parents=True)
        (run_dir / "configuration.ymmsl").write_text("ymmsl_version: v0.2\n")
        with SnapshotRegistry(
            stream.config,
            run_dir / "snapshots",
            database_url=url,
            campaign="retention",
        ) as registry:
            for index, (instance, data) in enumerate(stream.registrations):
                path = run_dir / "instances" / instance / "snapshots" / f"{index}.pack"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * 100)
                registry.add_snapshot(
                    instance, {**data, "snapshot_filename": str(path)}
                )
            live = LiveRun(
                registry.run_number,
                unwritten=lambda: registry.unwritten_workflow_snapshot_files,
            )

            def one_pass() -> float:
                start = time.perf_counter()
                plan = plan_cleanup(url, "retention", 2, live=live)
                if plan.deletable:  # as the worker does
                    delete_files(url, plan)
                return time.perf_counter() - start

            first = one_pass()
            steady = one_pass()
            start = time.perf_counter()
            plan_cleanup(url, "retention", 2, live=live)
            planning = time.perf_counter() - start
    return len(stream.registrations), first, steady, planning


# ------------------------------------------------------------------------ output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--history",
        type=int,
        default=1_000_000,
        help="retired nodes for the history scenario (0: skip)",
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=2_000,
        help="checkpoints of the retention scenario, 11 nodes each (0: skip)",
    )
    parser.add_argument("--markdown", type=Path)
    arguments = parser.parse_args()
    repeat = 1 if arguments.quick else arguments.repeat
    use_postgres = not arguments.no_postgres and postgres_available()

    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"snapreg benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores,"
        f" median of {repeat} replay(s), microseconds per registration"
    )
    emit()
    with sqlite_url() as url:
        sqlite_floor = statistics.median(floor(url) for _ in range(repeat))
    postgres_floor = None
    if use_postgres:
        with postgres_url() as url:
            postgres_floor = statistics.median(floor(url) for _ in range(repeat))
    emit(
        f"floor (Core insert of node + edge, commit): SQLite file {sqlite_floor * 1e6:.0f}"
        + (f", PostgreSQL {postgres_floor * 1e6:.0f}" if postgres_floor else "")
    )
    emit()
    header = (
        "| scenario | instances | registrations | workflow snapshots | muscle3 |"
        " snapreg SQLite | ratio | × floor |"
        + (" snapreg PostgreSQL | ratio |" if use_postgres else "")
    )
    emit(header)
    emit("|" + "---|" * (header.count("|") - 1))
    for scenario in scenarios(arguments.quick):
        if arguments.only and arguments.only not in scenario.name:
            continue
        count = len(scenario.stream.registrations)
        cells = [
            scenario.name + (f" ({scenario.note})" if scenario.note else ""),
            str(scenario.instances),
            str(count),
        ]
        muscle3 = None
        found = None
        if scenario.muscle3:
            seconds, found = median_time(
                repeat, lambda stream=scenario.stream: replay_muscle3(stream)
            )
            muscle3 = seconds / count

        def on_sqlite(scenario: Scenario = scenario) -> tuple[float, int]:
            with sqlite_url() as fresh:
                return replay_snapreg(scenario.stream, fresh, scenario.policy)

        seconds, ours_found = median_time(repeat, on_sqlite)
        sqlite_time = seconds / count
        if found is not None and found != ours_found and scenario.policy == "all":
            raise SystemExit(
                f"{scenario.name}: MUSCLE3 found {found}, snapreg {ours_found}"
            )
        cells.append(str(ours_found))
        cells.append("n/a" if muscle3 is None else f"{muscle3 * 1e6:.0f}")
        cells.append(f"{sqlite_time * 1e6:.0f}")
        cells.append("" if muscle3 is None else f"{sqlite_time / muscle3:.2f}")
        cells.append(f"{sqlite_time / sqlite_floor:.2f}")
        if use_postgres:

            def on_postgres(scenario: Scenario = scenario) -> tuple[float, int]:
                with postgres_url() as fresh:
                    return replay_snapreg(scenario.stream, fresh, scenario.policy)

            seconds, _ = median_time(repeat, on_postgres)
            postgres_time = seconds / count
            cells.append(f"{postgres_time * 1e6:.0f}")
            cells.append("" if muscle3 is None else f"{postgres_time / muscle3:.2f}")
        emit("| " + " | ".join(cells) + " |")
    if not arguments.only or "group" in arguments.only:
        emit()
        for backend, make_url in (("SQLite", sqlite_url), ("PostgreSQL", postgres_url)):
            if backend == "PostgreSQL" and not use_postgres:
                continue
            runs = []
            for _ in range(repeat):
                with make_url() as url:
                    runs.append(group_commit(url))
            seconds = statistics.median(run[0] for run in runs)
            cpu = statistics.median(run[1] for run in runs)
            registered = runs[0][2]
            emit(
                f"group commit ({backend}): {registered} registrations from 8 threads"
                f" through register_snapshot, all committed and processed in"
                f" {seconds:.2f} s (median of {repeat}; {cpu:.2f} s of CPU)"
            )
    if arguments.history and (not arguments.only or "history" in arguments.only):
        emit()
        with sqlite_url() as url:
            fresh, old, fresh_memory, old_memory = history(url, arguments.history)
        emit(
            f"history: {arguments.history} retired nodes: {old * 1e6:.0f} µs per"
            f" registration vs {fresh * 1e6:.0f} fresh (×{old / fresh:.2f}); memory"
            f" allocated while opening {old_memory:.1f} MiB vs {fresh_memory:.1f} MiB"
        )
    if arguments.retention and (not arguments.only or "retention" in arguments.only):
        emit()
        for backend, make_url in (("SQLite", sqlite_url), ("PostgreSQL", postgres_url)):
            if backend == "PostgreSQL" and not use_postgres:
                continue
            with make_url() as url:
                nodes, first, steady, planning = retention_pass(
                    url, arguments.retention
                )
            emit(
                f"retention ({backend}): a pass of manage --keep 2 on {nodes} nodes,"
                f" each a file: {first:.2f} s deleting nearly all, {steady:.2f} s"
                f" with nothing left to delete ({planning:.2f} s of it the plan)"
            )
    if arguments.markdown:
        arguments.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
