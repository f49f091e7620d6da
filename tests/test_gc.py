"""`snapreg gc`: real files in a run directory laid out as MUSCLE3 lays it out.

Five checkpoints, each a workflow snapshot of macro, micro[0] and micro[1]. Some
files are where they must never be deleted from: a node naming a file outside the
run directory, a symbolic link in an instance folder pointing outside, and a whole
instance snapshot folder that is a link to elsewhere. One file is already gone and
one file no node names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from sqlalchemy import select

from snapreg import SnapshotRegistry
from snapreg.storage import schema
from snapreg.storage.engines import create_database_engine
from snapreg.tools import gc_read, gc_safety
from snapreg.tools.gc import plan_cleanup
from snapreg.tools.gc_delete import delete_files
from snapreg.tools.reader import DatabaseReader
from support.command_line import invoke
from support.models import MACRO_MICRO_YMMSL, macro_micro_checkpoint

MODEL = MACRO_MICRO_YMMSL
CHECKPOINTS = 5


@dataclass
class Campaign:
    url: str
    run_dir: Path
    outside: Path
    files: dict[tuple[str, int], Path]  # (instance, checkpoint): the node's file
    workflow_snapshots: list[int]
    stray: Path


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def campaign(persistent_database_url: str, tmp_path: Path) -> Campaign:
    run_dir = tmp_path / "run"
    outside = tmp_path / "outside"
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(MODEL)
    instance_folders = {
        name: run_dir / "instances" / name / "snapshots"
        for name in ("macro", "micro[0]", "micro[1]")
    }
    # micro[0]'s snapshot folder is a link to a folder outside the run directory
    (outside / "micro0").mkdir(parents=True)
    instance_folders["micro[0]"].parent.mkdir(parents=True)
    instance_folders["micro[0]"].symlink_to(outside / "micro0")
    files: dict[tuple[str, int], Path] = {}
    for checkpoint in range(1, CHECKPOINTS + 1):
        for name, folder in instance_folders.items():
            stem = name.replace("[", "-").replace("]", "")
            files[name, checkpoint] = write(
                folder / f"{stem}_{checkpoint}.pack", 1000 * checkpoint + len(name)
            )
    # macro's first node names a file outside the run directory altogether
    files["macro", 1] = write(outside / "elsewhere" / "macro_1.pack", 500)
    # micro[1]'s second file is a link pointing outside
    secret = write(outside / "secret.pack", 700)
    files["micro[1]", 2].unlink()
    files["micro[1]", 2].symlink_to(secret)
    stray = write(instance_folders["macro"] / "macro_99.pack", 300)

    registry = SnapshotRegistry(
        ymmsl.load(MODEL),
        run_dir / "snapshots",
        database_url=persistent_database_url,
        campaign="gc",
    )
    found: list[int] = []
    for checkpoint in range(1, CHECKPOINTS + 1):
        for name in instance_folders:
            found.extend(
                snapshot.id
                for snapshot in registry.add_snapshot(
                    name,
                    macro_micro_checkpoint(name, checkpoint, files[name, checkpoint]),
                )
            )
    registry.close()
    assert len(found) == CHECKPOINTS
    files["macro", 2].unlink()  # gone before gc ever ran
    return Campaign(persistent_database_url, run_dir, outside, files, found, stray)


def everything_on_disk(campaign: Campaign) -> set[Path]:
    """Every file and link in the run directory and outside it."""
    found = set()
    for root in (campaign.run_dir, campaign.outside):
        for folder, folders, names in os.walk(root):
            links = [entry for entry in folders if (Path(folder) / entry).is_symlink()]
            found.update(Path(folder) / name for name in names + links)
    return found


def test_a_dry_run_shows_what_would_go_and_changes_nothing(
    campaign: Campaign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = everything_on_disk(campaign)
    deletable = [
        campaign.files["micro[1]", 1],
        campaign.files["macro", 3],
        campaign.files["micro[1]", 3],
    ]

    plan = plan_cleanup(campaign.url, "gc", keep=2)
    outcome = invoke(capsys, "gc", "--keep", "2", "--db", campaign.url, "--json")

    assert sorted(entry.path for entry in plan.deletable) == sorted(deletable)
    assert plan.bytes == sum(path.stat().st_size for path in deletable)
    assert plan.kept_workflow_snapshots == campaign.workflow_snapshots[:-3:-1]
    assert sorted(refused.entry.path for refused in plan.refused) == sorted(
        [
            campaign.files["macro", 1],
            campaign.files["micro[1]", 2],
            *(campaign.files["micro[0]", checkpoint] for checkpoint in (1, 2, 3)),
        ]
    )
    assert {refused.reason for refused in plan.refused} == {"outside"}
    assert [entry.path for entry in plan.missing] == [campaign.files["macro", 2]]
    # the second names no deletable file (its files are gone or refused)
    first, second, third = campaign.workflow_snapshots[:3]
    assert plan.broken_workflow_snapshots == [first, third]
    report = json.loads(outcome.stdout)
    assert report["dry_run"] and report["deleted"] is None
    assert report["deletable_bytes"] == plan.bytes
    assert everything_on_disk(campaign) == before
    words = invoke(capsys, "gc", "--keep", "2", "--db", campaign.url).stdout
    assert f"Would delete 3 files, {plan.bytes / 1000:.1f} kB:" in words
    assert "run again with --delete" in words
    assert "Refused (5)" in words and "Already gone (1)" in words


def test_many_files_find_the_workflow_snapshots_they_break_as_few_do(
    campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beyond a number of files, the workflow snapshots naming them are found by
    # reading every member once instead of putting the files in the query.
    def plans() -> list[list[int]]:
        return [
            plan_cleanup(campaign.url, "gc", keep=keep).broken_workflow_snapshots
            for keep in (1, 2, 3)
        ]

    def both_ways() -> tuple[list[list[int]], list[list[int]]]:
        with monkeypatch.context() as patch:
            patch.setattr(gc_read, "_FILES_IN_THE_QUERY", 0)
            many = plans()
        return plans(), many

    few, many = both_ways()
    first, _, third, fourth, _ = campaign.workflow_snapshots
    assert few == [[first, third, fourth], [first, third], [first]]
    assert many == few
    delete_files(campaign.url, plan_cleanup(campaign.url, "gc", keep=2))
    few, many = both_ways()  # files deleted, with rows that say so
    assert few == [[fourth], [], []]
    assert many == few


def test_delete_removes_exactly_those_files_and_records_each(
    campaign: Campaign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = everything_on_disk(campaign)
    plan = plan_cleanup(campaign.url, "gc", keep=2)
    sizes = {entry.path: entry.bytes for entry in plan.deletable}

    outcome = invoke(capsys, "gc", "--keep", "2", "--delete", "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert "Deleted 3 files" in outcome.stdout
    assert everything_on_disk(campaign) == before - set(sizes)
    for checkpoint in (4, 5):  # what the two kept workflow snapshots need
        for name in ("macro", "micro[0]", "micro[1]"):
            assert campaign.files[name, checkpoint].is_file()
    assert (campaign.outside / "secret.pack").read_bytes() == b"x" * 700
    assert campaign.stray.is_file()
    engine = create_database_engine(campaign.url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(schema.DeletedSnapshotFileRow.__table__)  # type: ignore[arg-type]
        ).all()
    engine.dispose()
    assert {(Path(row.path), row.bytes) for row in rows} == set(sizes.items())
    assert {row.reason for row in rows} == {plan.reason}
    assert "--keep 2" in plan.reason
    assert all(row.deleted_at is not None and row.snapshot_node_id for row in rows)

    again = plan_cleanup(campaign.url, "gc", keep=2)
    assert again.deletable == []
    assert [entry.path for entry in again.missing] == [campaign.files["macro", 2]]


def test_a_file_that_escapes_after_planning_is_not_deleted(
    campaign: Campaign,
) -> None:
    plan = plan_cleanup(campaign.url, "gc", keep=2)
    swapped = campaign.files["macro", 3]
    target = campaign.outside / "swapped.pack"
    swapped.rename(target)
    swapped.symlink_to(target)

    result = delete_files(campaign.url, plan)

    assert [entry.path for entry, _ in result.failed] == [swapped]
    assert "outside" in result.failed[0][1]
    assert target.is_file() and swapped.is_symlink()
    assert len(result.deleted) == 2


def test_a_folder_swapped_for_a_link_after_the_last_check_deletes_nothing(
    campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_cleanup(campaign.url, "gc", keep=2)
    target = campaign.files["macro", 3]
    decoy = campaign.outside / "decoy"
    shutil.copytree(target.parent, decoy)
    checked = gc_safety.refusal_of

    def swap_right_after_the_check(*args: Any) -> Any:
        answer = checked(*args)
        if args[0] == target:  # as an attacker racing gc would
            target.parent.rename(target.parent.with_name("moved"))
            target.parent.symlink_to(decoy)
        return answer

    monkeypatch.setattr(gc_safety, "refusal_of", swap_right_after_the_check)
    result = delete_files(campaign.url, plan)

    assert [(entry.path, error) for entry, error in result.failed] == [
        (target, "refused: a folder on its way is now a symbolic link")
    ]
    assert (decoy / target.name).is_file()
    assert len(result.deleted) == 2


def test_a_file_back_under_a_deleted_name_waits_for_a_node_that_names_it(
    campaign: Campaign,
) -> None:
    delete_files(campaign.url, plan_cleanup(campaign.url, "gc", keep=2))
    back = campaign.files["macro", 3]
    assert not back.exists()
    # libmuscle takes the first free name: a run started again in the same run
    # directory writes this name anew, and registers it only a moment later
    write(back, 42)

    before_its_node = plan_cleanup(campaign.url, "gc", keep=2)

    assert back not in {entry.path for entry in before_its_node.deletable}
    assert back not in {entry.path for entry in before_its_node.missing}
    assert back.read_bytes() == b"x" * 42

    # once a node registered after the deletion names it, it is that node's file
    later = [
        {
            name: back
            if (name, checkpoint) == ("macro", 6)
            else write(campaign.files[name, 5].with_name(f"{checkpoint}.pack"), 9)
            for name in ("macro", "micro[0]", "micro[1]")
        }
        for checkpoint in (6, 7, 8)
    ]
    with SnapshotRegistry(
        ymmsl.load(MODEL),
        campaign.run_dir / "snapshots",
        database_url=campaign.url,
        campaign="gc",
    ) as registry:
        _register_checkpoints(registry, later, start=6)
    engine = create_database_engine(campaign.url)
    with engine.connect() as connection:
        naming = list(
            connection.scalars(
                select(schema.SnapshotNodeRow.id)
                .where(schema.SnapshotNodeRow.snapshot_filename == str(back))
                .order_by(schema.SnapshotNodeRow.id)
            )
        )
    engine.dispose()

    after_its_node = plan_cleanup(campaign.url, "gc", keep=2)

    [entry] = [entry for entry in after_its_node.deletable if entry.path == back]
    assert len(naming) == 2 and entry.snapshot_node_id == naming[-1]


def test_keeping_every_workflow_snapshot_keeps_every_file(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_cleanup(campaign.url, "gc", keep=CHECKPOINTS)
    assert plan.deletable == plan.refused == []

    zero = invoke(capsys, "gc", "--keep", "0", "--db", campaign.url)
    both = invoke(
        capsys, "gc", "--keep", "1", "--dry-run", "--delete", "--db", campaign.url
    )
    assert zero.status == both.status == 2
    assert "--dry-run or --delete" in both.stderr


# --------------------------------------------- what is never an instance file
#
# Issue 12: nodes whose snapshot_filename named the SQLite database or a yMMSL
# file in the workflow snapshot folder had both deleted by gc --delete.


def _register_checkpoints(
    registry: SnapshotRegistry, files: list[dict[str, Path]], start: int = 1
) -> None:
    """One workflow snapshot per checkpoint; files[k] names each instance's file."""
    for checkpoint, named in enumerate(files, start=start):
        for name, path in named.items():
            registry.add_snapshot(name, macro_micro_checkpoint(name, checkpoint, path))


def _hashes(paths: list[Path]) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite-in-snapshot-folder",
        "sqlite-in-instance-folder",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ],
)
def test_gc_never_deletes_a_database_or_a_ymmsl_file(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    snapshots = run_dir / "snapshots"
    snapshots.mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(MODEL)
    folder = {
        name: run_dir / "instances" / name / "snapshots"
        for name in ("macro", "micro[0]", "micro[1]")
    }
    for path in folder.values():
        path.mkdir(parents=True)
    if backend == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
        database = folder["macro"] / "registry.sqlite"  # some other SQLite file
        sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    else:
        where = snapshots if backend == "sqlite-in-snapshot-folder" else folder["macro"]
        database = where / "snapreg.sqlite"
        url = f"sqlite:///{database}"
    registry = SnapshotRegistry(
        ymmsl.load(MODEL), snapshots, database_url=url, campaign="gc"
    )
    # a reader keeps the database open: its -wal and -shm files exist
    keeper = sqlite3.connect(database)
    keeper.execute("PRAGMA journal_mode=WAL")
    keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()
    wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
    assert wal.exists() and shm.exists()
    resume = write(snapshots / "resume.ymmsl", 40)
    settings = write(folder["micro[0]"] / "settings.ymmsl", 50)
    journal = write(folder["micro[1]"] / "micro-1_9.pack-journal", 60)
    other_database = folder["micro[1]"] / "other.sqlite"
    sqlite3.connect(other_database).execute("CREATE TABLE t (x)").connection.close()
    stray_pack = write(snapshots / "macro_7.pack", 70)  # not an instance folder
    never = [resume, settings, journal, other_database, stray_pack]
    # a link to a file that is gone: the link itself may go
    dangling = folder["micro[1]"] / "micro-1_3.pack"
    dangling.symlink_to(folder["micro[1]"] / "gone.pack")

    def pack(name: str, checkpoint: int) -> Path:
        stem = name.replace("[", "-").replace("]", "")
        return write(folder[name] / f"{stem}_{checkpoint}.pack", 100 + checkpoint)

    plain = {
        checkpoint: {name: pack(name, checkpoint) for name in folder}
        for checkpoint in (4, 5)
    }
    _register_checkpoints(
        registry,
        [
            {"macro": database, "micro[0]": resume, "micro[1]": other_database},
            {"macro": wal, "micro[0]": settings, "micro[1]": journal},
            {"macro": shm, "micro[0]": stray_pack, "micro[1]": dangling},
            plain[4],
            plain[5],  # kept
        ],
    )
    registry.close()
    before = _hashes(never)

    outcome = invoke(capsys, "gc", "--keep", "1", "--delete", "--db", url, "--json")

    assert outcome.status == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    expected = {dangling, *plain[4].values()}
    assert {Path(entry["path"]) for entry in report["deleted"]} == expected
    assert report["failed"] == []
    refused = {Path(entry["path"]): entry["reason"] for entry in report["refused"]}
    named = {database, wal, shm, *never}
    assert set(refused) == named
    assert refused[settings] == "a yMMSL file"
    # the workflow snapshot folder is no place to delete from at all
    assert refused[resume] == refused[stray_pack] == "outside"
    for path in (database, wal, shm, journal, other_database):
        in_snapshot_folder = path.parent == snapshots
        assert refused[path] == (
            "outside" if in_snapshot_folder else "a database file"
        ), path
    assert all(not os.path.lexists(path) for path in expected)
    assert _hashes(never) == before
    assert database.is_file() and wal.exists() and shm.exists()
    assert all(plain[5][name].is_file() for name in folder)
    keeper.close()
    with DatabaseReader(url) as reader:  # the registry's database is whole
        assert len(reader.workflow_snapshots("gc")) == 5


def test_a_name_resolves_as_its_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plan splits names as strings instead of making a Path of each and
    # resolves each folder once; it must land where resolving the whole path
    # lands, for every kind of name.
    real = tmp_path / "real" / "snapshots"
    real.mkdir(parents=True)
    write(real / "a.pack", 10)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (real / "link.pack").symlink_to(real / "a.pack")
    (real / "dangling.pack").symlink_to(real / "gone.pack")
    monkeypatch.chdir(tmp_path)
    names = [
        f"{tmp_path}/real/snapshots/a.pack",
        f"{tmp_path}/linked/snapshots/a.pack",
        f"{tmp_path}/linked/snapshots/link.pack",
        f"{tmp_path}/linked/snapshots/dangling.pack",
        f"{tmp_path}/linked/snapshots/missing.pack",
        f"{tmp_path}/linked/snapshots/../snapshots/a.pack",
        f"{tmp_path}/linked//snapshots/a.pack",
        f"{tmp_path}/linked/./snapshots/a.pack",
        f"{tmp_path}/linked/snapshots/.",
        f"{tmp_path}/linked/snapshots/..",
        f"{tmp_path}/linked/snapshots/",
        f"/{tmp_path}/linked/snapshots/a.pack",
        "linked/snapshots/a.pack",
        "./linked/snapshots/a.pack",
        "a.pack",
        "",
        ".",
        "/",
    ]
    resolver = gc_safety.Resolver()
    for name in names:
        expected = gc_safety.resolved(Path(name))
        assert resolver.file_name(name, gc_safety.lstat_or_none(name)) == str(
            expected
        ), name
        assert resolver.file(Path(name), gc_safety.lstat_or_none(Path(name))) == (
            expected
        ), name


def test_a_plan_resolves_each_folder_once_not_each_file(
    persistent_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dashboard's disk figures on a million files took a minute, nearly all
    # of it in resolving every path component of every file, several times a
    # file. The folders are few and shared: resolving them once per plan makes
    # the work of a plan, in resolved paths, independent of the number of files.
    run_dir = tmp_path / "run"
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(MODEL)
    registry = SnapshotRegistry(
        ymmsl.load(MODEL),
        run_dir / "snapshots",
        database_url=persistent_database_url,
        campaign="many",
    )
    checkpoints = 0

    def checkpoint_more(count: int) -> None:
        nonlocal checkpoints
        for checkpoint in range(checkpoints + 1, checkpoints + count + 1):
            for name in ("macro", "micro[0]", "micro[1]"):
                folder = run_dir / "instances" / name / "snapshots"
                path = write(folder / f"{checkpoint}.pack", 100)
                registry.add_snapshot(
                    name, macro_micro_checkpoint(name, checkpoint, path)
                )
        checkpoints += count

    calls = 0
    realpath = os.path.realpath

    def counting(path: Any, **options: Any) -> str:
        nonlocal calls
        calls += 1
        return realpath(path, **options)

    def resolutions_of_a_plan() -> tuple[int, int]:
        nonlocal calls
        calls = 0
        with monkeypatch.context() as patch:
            patch.setattr(gc_safety.os.path, "realpath", counting)
            plan = plan_cleanup(persistent_database_url, "many", keep=1)
        return calls, len(plan.deletable)

    checkpoint_more(10)
    fewer, deletable = resolutions_of_a_plan()
    assert deletable == 27
    checkpoint_more(20)
    more, deletable = resolutions_of_a_plan()
    assert deletable == 87
    registry.close()
    assert fewer == more
