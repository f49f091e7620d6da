"""`snapreg import`: rebuild a campaign from real MUSCLE3 run directories.

The reference is what stock muscle_manager wrote: the workflow snapshot files in
RUN_DIR/snapshots. A fresh run of the example has no races, so the default order
alone reproduces them; a resumed run has (the resumed instances take snapshots
within milliseconds of each other), and the manager's own files settle them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import ymmsl

import snapreg.muscle3.compat
from snapreg import SnapshotRegistry
from snapreg.rules.topology import Topology
from snapreg.tools.import_order import (
    ResumeKey,
    SnapshotFile,
    manager_workflow_snapshots,
    registration_order,
    resume_key,
)
from snapreg.tools.importer import (
    IMPORT_FOLDER,
    import_run_directory,
    load_configuration,
    read_snapshot_files,
)
from snapreg.tools.reader import DatabaseReader
from support import stock_runs
from support.command_line import invoke

# slow: all but one test import real runs of MUSCLE3's manager
pytestmark = [pytest.mark.muscle3, pytest.mark.slow]

MODEL = "reaction_diffusion"


def fresh_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A copy of the stock fresh run directory, to change or import."""
    return stock_runs.copy_run(stock_runs.fresh_run(tmp_path_factory), tmp_path / "run")


def manager_files(run_dir: Path) -> set[ResumeKey]:
    """The resume mappings of the workflow snapshot files the manager wrote."""
    found = manager_workflow_snapshots(run_dir)
    assert found is not None
    return set(found)


def imported(database_url: str, run: int) -> set[ResumeKey]:
    with DatabaseReader(database_url) as reader:
        snapshots = reader.workflow_snapshots(MODEL, run=run)
    return {
        resume_key((str(k), str(v)) for k, v in snapshot.resume.items())
        for snapshot in snapshots
    }


def test_a_fresh_run_imports_to_the_workflow_snapshots_the_manager_wrote(
    persistent_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = fresh_copy(tmp_path_factory, tmp_path)
    outcome = invoke(capsys, "import", str(run_dir), "--db", persistent_database_url)

    assert outcome.status == 0, outcome.stderr
    assert f"as run 1 of campaign '{MODEL}': 21 snapshots, 6 workflow" in outcome.stdout
    assert "They equal the 6 the manager wrote" in outcome.stdout
    written = manager_files(run_dir)
    assert len(written) == 6
    assert imported(persistent_database_url, 1) == written
    # the rebuilt files are ones muscle_manager can resume from
    files = sorted((run_dir / IMPORT_FOLDER).glob("snapshot_*.ymmsl"))
    assert len(files) == 6
    assert {
        resume_key((str(k), str(v)) for k, v in ymmsl.load(path).resume.items())
        for path in files
    } == written


def test_a_resumed_run_imports_to_what_the_manager_wrote_and_records_lineage(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    original = stock_runs.fresh_run(tmp_path_factory)
    fresh = stock_runs.copy_run(original, tmp_path / "fresh")
    resumed = stock_runs.copy_run(
        stock_runs.resumed_run(tmp_path_factory), tmp_path / "resumed"
    )
    # as if both had run here: the resume section names the copy's files
    configuration = resumed / "configuration.ymmsl"
    configuration.write_text(
        configuration.read_text().replace(str(original), str(fresh))
    )
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"

    first = import_run_directory(fresh, url)
    second = import_run_directory(resumed, url)

    assert (first.run, second.run) == (1, 2)
    assert first.comparison is not None and first.comparison.equal
    assert second.comparison is not None and second.comparison.equal
    assert second.comparison.manager_files == 7
    assert imported(url, 2) == manager_files(resumed)
    resume = {str(k): str(v) for k, v in load_configuration(resumed).resume.items()}
    [resumed_from] = [
        snapshot
        for snapshot in first.workflow_snapshots
        if {str(k): str(v) for k, v in snapshot.resume.items()} == resume
    ]
    assert second.resumed_from == resumed_from.id
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
    assert campaign.runs[1].resumed_from == resumed_from.id


def test_races_are_settled_the_way_the_manager_files_say(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run_dir = stock_runs.resumed_run(tmp_path_factory)
    configuration = load_configuration(run_dir)
    topology = Topology.from_configuration(configuration)
    files = read_snapshot_files(run_dir, topology, configuration)
    default = registration_order(files, topology)
    # Every order of the three micro instances' first new snapshots is one the
    # manager may have seen; each gives other workflow snapshots.
    racing = _first_new_micro_snapshots(default)
    assert len(racing) == 3
    outcomes = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        reordered = [item for item in default if item not in racing]
        at = default.index(racing[0])
        reordered[at:at] = [racing[position] for position in order]
        manager = _replayed(configuration, reordered)
        outcomes.append(set(manager))
        guided = registration_order(files, topology, manager)
        assert set(_replayed(configuration, guided)) == set(manager)
    assert len({frozenset(outcome) for outcome in outcomes}) == 3


@pytest.mark.parametrize("late", ["micro[0]", "micro[1]", "micro[2]"])
def test_a_resume_copy_written_after_new_snapshots_is_placed_by_its_file_s_time(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, late: str
) -> None:
    # An instance that starts late on a busy host stores the copy of the snapshot
    # it resumed from, and sends it, after the others have sent new ones. Seen
    # under load: the manager then wrote a workflow snapshot that no order with
    # the copies first finds. The files' modification times tell that story.
    run_dir = stock_runs.copy_run(
        stock_runs.resumed_run(tmp_path_factory), tmp_path / "resumed"
    )
    configuration = load_configuration(run_dir)
    topology = Topology.from_configuration(configuration)
    default = registration_order(
        read_snapshot_files(run_dir, topology, configuration), topology
    )
    [copy] = [item for item in default if item.instance == late and item.is_resume_copy]
    first_new = _first_new_micro_snapshots(default)
    assert len(first_new) == 3
    [own] = [item for item in first_new if item.instance == late]
    others = [item for item in first_new if item is not own]
    # written, and so sent: the others' first new snapshots, its copy, its own
    last = max(item.path.stat().st_mtime_ns for item in others)
    for step, item in enumerate((copy, own), start=1):
        os.utime(item.path, ns=(last + step * 1_000_000, last + step * 1_000_000))
    arrived = [*others, copy, own]
    reordered = [item for item in default if item not in arrived]
    at = default.index(first_new[0]) - 1  # the copy went before it
    reordered[at:at] = arrived
    manager = _replayed(configuration, reordered)
    assert set(manager) != set(_replayed(configuration, default))

    files = read_snapshot_files(run_dir, topology, configuration)
    guided = registration_order(files, topology, manager)

    assert set(_replayed(configuration, guided)) == set(manager)
    # without the manager's files, the copies go first as before
    assert registration_order(files, topology) == default


def _first_new_micro_snapshots(order: list[SnapshotFile]) -> list[SnapshotFile]:
    """The micro instances' first new snapshots (after their resume copies), in
    the order given: those that race in a resumed run of the example."""
    return [
        item for item in order if item.instance.startswith("micro") and item.number == 2
    ]


def _replayed(configuration: object, order: list) -> list[ResumeKey]:  # type: ignore[type-arg]
    registry = SnapshotRegistry(configuration, None, database_url="sqlite://")
    try:
        found = []
        for item in order:
            for snapshot in registry.add_snapshot(item.instance, item.metadata):
                found.append(
                    resume_key((str(k), str(v)) for k, v in snapshot.resume.items())
                )
        return found
    finally:
        registry.close()


def test_without_the_manager_files_the_wallclock_order_is_used(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run_dir = fresh_copy(tmp_path_factory, tmp_path)
    written = manager_files(run_dir)
    shutil.rmtree(run_dir / "snapshots")
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"

    result = import_run_directory(run_dir, url)

    assert result.comparison is None
    assert imported(url, 1) == written


def test_a_run_directory_is_imported_once_per_campaign(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = fresh_copy(tmp_path_factory, tmp_path)
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    assert invoke(capsys, "import", str(run_dir), "--db", url).status == 0

    again = invoke(capsys, "import", str(run_dir), "--db", url)
    elsewhere = invoke(
        capsys, "import", str(run_dir), "--db", url, "--campaign", "copy", "--json"
    )

    assert again.status == 1
    assert again.stderr.count("\n") == 1
    assert "already holds" in again.stderr and "--campaign" in again.stderr
    assert elsewhere.status == 0, elsewhere.stderr
    report = json.loads(elsewhere.stdout)
    assert (report["campaign"], report["run"], report["snapshots"]) == ("copy", 1, 21)
    assert report["manager"] == {"files": 6, "in_both": 6, "equal": True}
    assert len(report["workflow_snapshots"]) == 6


def test_what_is_not_a_run_directory_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    outcome = invoke(capsys, "import", str(tmp_path), "--db", url)

    assert outcome.status == 1
    assert outcome.stderr.count("\n") == 1
    assert "not a MUSCLE3 run directory" in outcome.stderr
    assert not (tmp_path / "campaign.sqlite").exists()


def test_a_damaged_snapshot_file_is_named(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = fresh_copy(tmp_path_factory, tmp_path)
    damaged = run_dir / "instances" / "micro[1]" / "snapshots" / "micro-1_3.pack"
    damaged.write_bytes(b"9 not a snapshot")
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"

    outcome = invoke(capsys, "import", str(run_dir), "--db", url)

    assert outcome.status == 1
    assert f"cannot read snapshot file {damaged}" in outcome.stderr
    assert not (tmp_path / "campaign.sqlite").exists()


def test_a_snapshot_file_of_the_other_muscle3_release_says_which_to_use(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 0.10 writes format 1, 0.11 format 2, and neither reads the other's
    installed = snapreg.muscle3.compat.check_version("this test")
    other, byte = ("0.10", b"1") if installed.startswith("0.11.") else ("0.11", b"2")
    run_dir = fresh_copy(tmp_path_factory, tmp_path)
    foreign = run_dir / "instances" / "macro" / "snapshots" / "macro_2.pack"
    foreign.write_bytes(byte + foreign.read_bytes()[1:])
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"

    outcome = invoke(capsys, "import", str(run_dir), "--db", url)

    assert outcome.status == 1
    assert outcome.stderr.count("\n") == 1
    assert f"cannot read snapshot file {foreign}" in outcome.stderr
    assert f"written by MUSCLE3 {other}" in outcome.stderr
    assert f"import it with MUSCLE3 {other}" in outcome.stderr
    assert not (tmp_path / "campaign.sqlite").exists()


def test_without_muscle3_import_says_how_to_install_it(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = stock_runs.fresh_run(tmp_path_factory)
    monkeypatch.setitem(sys.modules, "libmuscle.snapshot_manager", None)
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"

    outcome = invoke(capsys, "import", str(run_dir), "--db", url)

    assert outcome.status == 1
    assert outcome.stderr.count("\n") == 1
    assert "pip install 'snapreg[muscle3]'" in outcome.stderr


# ------------------------------------------------- a hostile run directory
#
# Issue 12: with RUN_DIR/snapreg_import and an instance snapshot folder linked
# into another run, import wrote 16 files there and recorded that run's folder,
# and gc then deleted 15 of its 16 .pack files.


def _listing(folder: Path) -> dict[str, str]:
    """Every file below a folder (links not followed), with its bytes' hash."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.mark.parametrize(
    "linked",
    [
        pytest.param(("snapreg_import",), id="import-folder"),
        pytest.param(("instances/macro/snapshots",), id="instance-folder"),
        pytest.param(("instances/macro",), id="instance"),
        pytest.param(("instances/macro/snapshots/macro_1.pack",), id="snapshot-file"),
        pytest.param(
            ("snapreg_import", "instances/macro/snapshots"), id="both-as-reported"
        ),
    ],
)
def test_links_out_of_the_run_directory_are_refused_and_nothing_is_written(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    linked: tuple[str, ...],
) -> None:
    victim = fresh_copy(tmp_path_factory, tmp_path)
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    assert invoke(capsys, "import", str(victim), "--db", url).status == 0
    hostile = stock_runs.copy_run(
        stock_runs.fresh_run(tmp_path_factory), tmp_path / "h"
    )
    for relative in linked:
        link = hostile / relative
        if link.is_dir():
            shutil.rmtree(link)
        else:
            link.unlink(missing_ok=True)
        link.symlink_to(victim / relative)
    before = _listing(victim)

    outcome = invoke(
        capsys, "import", str(hostile), "--db", url, "--campaign", "hostile"
    )

    assert outcome.status == 1, outcome.stdout
    assert outcome.stderr.count("\n") == 1, outcome.stderr
    assert "leads out of the run directory" in outcome.stderr
    assert any(str(hostile / relative) in outcome.stderr for relative in linked)
    assert _listing(victim) == before
    with DatabaseReader(url) as reader:
        assert [campaign.name for campaign in reader.campaigns()] == [MODEL]


def test_gc_deletes_nothing_through_a_run_recorded_through_links(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What the importer of issue 12 recorded: the linked folders resolved, so
    # that the run's folder is the victim's and its files lie in the victim's
    # instance folder (reached through the hostile run directory's link).
    victim = fresh_copy(tmp_path_factory, tmp_path)
    hostile = stock_runs.copy_run(
        stock_runs.fresh_run(tmp_path_factory), tmp_path / "h"
    )
    for relative in ("snapreg_import", "instances/macro/snapshots"):
        (victim / relative).mkdir(exist_ok=True)
        shutil.rmtree(hostile / relative, ignore_errors=True)
        (hostile / relative).symlink_to(victim / relative)
    configuration = load_configuration(victim)
    topology = Topology.from_configuration(configuration)
    files = read_snapshot_files(victim, topology, configuration)
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with SnapshotRegistry(
        configuration, hostile / "snapreg_import", database_url=url
    ) as registry:
        for snapshot_file in registration_order(files, topology):
            # each file named as the hostile run directory names it
            filename = snapshot_file.metadata.snapshot_filename
            registry.add_snapshot(
                snapshot_file.instance,
                dataclasses.replace(
                    snapshot_file.metadata,
                    snapshot_filename=filename.replace(str(victim), str(hostile)),
                ),
            )
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
    assert campaign.runs[0].snapshot_folder == str(victim / "snapreg_import")
    before = _listing(victim)
    assert sum(name.endswith(".pack") for name in before) == 21

    outcome = invoke(capsys, "gc", "--keep", "1", "--delete", "--db", url, "--json")

    assert outcome.status == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["deleted"] == [] and report["refused"]
    assert {entry["reason"] for entry in report["refused"]} == {"outside"}
    assert _listing(victim) == before
