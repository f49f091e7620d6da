"""MUSCLE3's snapshot scenarios, run with snapreg swapped in by name.

A MUSCLE3 developer tries snapreg by rebinding the one name ``SnapshotRegistry``
in ``libmuscle.manager.manager`` and running a simulation, nothing else: the
manager builds the registry with no database URL and ends it with
``shutdown()`` and ``join()``. For each coupling that MUSCLE3's own snapshot
tests exercise (stateless, vector and transformer micro models, a dispatch
chain, interacting models, a complex coupling with several conduits between the
same pair), a real simulation runs once with stock MUSCLE3 and once with the name
rebound, and then again resumed from one of its workflow snapshots. Both must
write the same workflow snapshot files, the snapshot folder must hold nothing
else, and snapreg's run must be ended in its database, beside the folder.

The components snapshot at simulation times only, but the order in which
instances register still varies from run to run (the dispatch chain's runs
differed, first runs on MUSCLE3 0.10 and resumed runs on 0.11), and so do the
workflow snapshots a registry writes. So what snapreg writes is compared with
what MUSCLE3's own registry writes for the registrations snapreg received, in
the order it stored them, and with stock's runs in that both write workflow
snapshots, resume from them and finish. That a run resumed is judged by its
instances, each of which says on its output that it loaded a snapshot, not by
how many workflow snapshots it wrote: a resumed stock run of the dispatch chain
has written more than its first run did.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import ymmsl

from snapreg.rules.metadata import METADATA_FIELDS
from snapreg.tools.reader import DatabaseReader
from support import scenarios
from support.oracle import run_oracle
from support.scenarios import SCENARIOS, Manager, ResumeMapping, Scenario
from support.streams import Stream

# slow: every test runs real simulations under MUSCLE3's manager
pytestmark = [pytest.mark.muscle3, pytest.mark.slow]

DATABASE_NAME = "snapreg.sqlite"
#: A scenario runs in seconds; startup alone can take ten on a busy host.
RUN_TIMEOUT = 60.0


def run_to_the_end(
    scenario: Scenario,
    manager: Manager,
    run_dir: Path,
    *extra_files: Path,
    database_url: str | None = None,
) -> list[Path]:
    """Run a scenario; check it finished and its snapshot folder; its files.

    ``database_url`` becomes ``$SNAPREG_DATABASE_URL`` (unset without it).
    """
    try:
        finished = scenarios.run(
            scenario,
            manager,
            run_dir,
            *extra_files,
            env=scenarios.environment(database_url),
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as timed_out:
        # e.g. a registration refused without an answer: the instance waits
        pytest.fail(
            f"the {manager} run did not finish within {RUN_TIMEOUT:.0f} s; the end"
            f" of its output:\n{(timed_out.stderr or '')[-3000:]}"
        )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Simulation completed successfully." in finished.stdout
    folder = run_dir / "snapshots"
    entries = sorted(entry.name for entry in folder.iterdir())
    strays = [
        name for name in entries if not scenarios.WORKFLOW_SNAPSHOT_NAME.fullmatch(name)
    ]
    assert strays == [], "the snapshot folder holds more than workflow snapshots"
    files = scenarios.workflow_snapshot_files(run_dir)
    assert sorted(path.name for path in files) == entries
    return files


def assert_run_ended_in_database_beside(run_dir: Path, files: list[Path]) -> None:
    """snapreg's database is in the run directory, its one run ended."""
    database = run_dir / DATABASE_NAME
    assert database.is_file(), f"no {DATABASE_NAME} in the run directory"
    wal = database.with_name(f"{DATABASE_NAME}-wal")
    # a finished run has folded its write-ahead log back into the database
    assert not wal.exists() or wal.stat().st_size == 0
    with DatabaseReader(f"sqlite:///{database}") as reader:
        [campaign] = reader.campaigns()
        [run] = campaign.runs
        recorded = reader.workflow_snapshots(campaign.name)
    assert (run.status, run.writer) == ("ended", None)
    assert run.snapshot_folder == str((run_dir / "snapshots").resolve())
    assert sorted(Path(snapshot.path or "") for snapshot in recorded) == sorted(
        path.resolve() for path in files
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_snapreg_swapped_in_by_name_writes_what_stock_muscle3_writes(
    tmp_path: Path, scenario: Scenario
) -> None:
    roots = {manager: tmp_path / manager for manager in scenarios.MANAGERS}
    first = {
        manager: run_to_the_end(scenario, manager, root / "run1")
        for manager, root in roots.items()
    }

    written = {
        manager: scenarios.resume_mappings(root / "run1", root)
        for manager, root in roots.items()
    }
    # what MUSCLE3's own registry writes for the registrations snapreg received
    assert written["snapreg"] == muscle3_registry_on_what_snapreg_received(
        roots["snapreg"] / "run1", roots["snapreg"]
    )
    assert len(first["stock"]) > scenario.resume_from
    assert len(first["snapreg"]) > scenario.resume_from
    assert_run_ended_in_database_beside(roots["snapreg"] / "run1", first["snapreg"])

    # resume each from the same place in its own list of files
    resume_files = {manager: first[manager][scenario.resume_from] for manager in roots}
    second = {
        manager: run_to_the_end(scenario, manager, root / "run2", resume_files[manager])
        for manager, root in roots.items()
    }

    resumed = scenarios.resume_mappings(roots["snapreg"] / "run2", roots["snapreg"])
    assert resumed == muscle3_registry_on_what_snapreg_received(
        roots["snapreg"] / "run2", roots["snapreg"]
    )
    # each resumed, rather than starting again: instances the resume file names
    # loaded snapshots, and no other did; every one named with an intermediate
    # snapshot did (one that resumes from its final snapshot with no use left
    # returns before it could load it)
    for manager, root in roots.items():
        assert second[manager], f"{manager}'s resumed run wrote no workflow snapshot"
        named = {
            instance
            for instance, _ in scenarios.resume_mapping(resume_files[manager], root)
        }
        kinds = scenarios.member_kinds(resume_files[manager])
        # the description's table lists every member (and instances not yet
        # started, which the resume section leaves out)
        assert named <= kinds.keys()
        loaded = scenarios.resumed_instances(root / "run2")
        assert loaded, f"no instance of {manager}'s second run resumed"
        intermediate = {name for name, kind in kinds.items() if kind == "Intermediate"}
        assert intermediate <= loaded <= named
    assert_run_ended_in_database_beside(roots["snapreg"] / "run2", second["snapreg"])


def muscle3_registry_on_what_snapreg_received(
    run_dir: Path, root: Path
) -> Counter[ResumeMapping]:
    """The resume sections MUSCLE3's registry writes for the registrations of the
    run in ``run_dir``'s database, fed in the order snapreg stored them."""
    with sqlite3.connect(run_dir / DATABASE_NAME) as connection:
        ((run_id, configuration),) = connection.execute(
            "SELECT id, configuration FROM run"
        ).fetchall()
        rows = connection.execute(
            "SELECT instance, triggers, wallclock_time, simulation_time,"
            " next_simulation_time, port_message_counts, is_final, snapshot_filename"
            " FROM snapshot_node WHERE run_id = ? AND NOT is_restart ORDER BY id",
            (run_id,),
        ).fetchall()
    connection.close()
    registrations = []
    for instance, *values in rows:
        # the SELECT names the columns in the order of the metadata's fields
        metadata = dict(zip(METADATA_FIELDS, values, strict=True))
        metadata["triggers"] = json.loads(metadata["triggers"])
        metadata["port_message_counts"] = json.loads(metadata["port_message_counts"])
        if metadata["timestamp"] is None:  # a NULL simulation time is a NaN
            metadata["timestamp"] = math.nan
        metadata["is_final_snapshot"] = bool(metadata["is_final_snapshot"])
        registrations.append((instance, metadata))
    stream = Stream("recorded", ymmsl.load(configuration), registrations)
    return Counter(
        frozenset(
            (instance, os.path.relpath(snapshot, root))
            for instance, snapshot in resume.items()
        )
        for step in run_oracle(stream)
        for resume in step.resume
    )


def test_snapreg_database_url_keeps_a_campaign_of_several_manager_starts(
    tmp_path: Path,
) -> None:
    # One database for the first run and the run resumed from it, as a user
    # would set it for a campaign; each manager start is a run of its own.
    scenario = scenarios.MACRO_MICRO
    database = tmp_path / "campaign.sqlite"
    url = f"sqlite:///{database}"
    roots = {manager: tmp_path / manager for manager in scenarios.MANAGERS}
    first = {
        manager: run_to_the_end(scenario, manager, root / "run1", database_url=url)
        for manager, root in roots.items()
    }
    chosen = {manager: files[scenario.resume_from] for manager, files in first.items()}
    second = {
        manager: run_to_the_end(
            scenario, manager, root / "run2", chosen[manager], database_url=url
        )
        for manager, root in roots.items()
    }

    for run_dir in ("run1", "run2"):
        assert scenarios.resume_mappings(
            roots["snapreg"] / run_dir, roots["snapreg"]
        ) == scenarios.resume_mappings(roots["stock"] / run_dir, roots["stock"])
        assert not (roots["snapreg"] / run_dir / DATABASE_NAME).exists()
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
        recorded = reader.workflow_snapshots(campaign.name)
    assert campaign.name == scenario.name
    assert [(run.number, run.status, run.writer) for run in campaign.runs] == [
        (1, "ended", None),
        (2, "ended", None),
    ]
    assert [run.snapshot_folder for run in campaign.runs] == [
        str((roots["snapreg"] / run_dir / "snapshots").resolve())
        for run_dir in ("run1", "run2")
    ]
    assert sorted(Path(snapshot.path or "") for snapshot in recorded) == sorted(
        path.resolve() for path in first["snapreg"] + second["snapreg"]
    )
