"""`snapreg manage`: real MUSCLE3 runs of the reaction-diffusion example, end to end.

A plain run must write the workflow snapshot files that stock `muscle_manager`
writes for the same simulation, and a manager killed mid-run must be resumed by
`--resume-latest` to the same final result as an uninterrupted run, with the
lineage recorded. The example is deterministic in what it snapshots: every
workflow snapshot holds one snapshot per instance at the same checkpoint, so the
sets of resume mappings of two runs compare equal (checked over repeated stock
runs when this test was written).
"""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import pytest
import ymmsl

import snapreg.muscle3.compat
from snapreg.tools.reader import DatabaseReader
from support import simulation
from support.command_line import invoke

# slow: every test runs MUSCLE3's manager or snapreg manage for real
pytestmark = [pytest.mark.muscle3, pytest.mark.slow]

MODEL = "reaction_diffusion"
#: Workflow snapshots of one default run: t = 0, 0.25, 0.5, 0.75, 1.0 and the end.
DEFAULT_RUN_WORKFLOW_SNAPSHOTS = 6


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the example with the stock muscle_manager."""
    base = tmp_path_factory.mktemp("stock")
    run_dir = base / "run"
    finished = simulation.run(simulation.stock_command(run_dir), cwd=base)
    assert finished.returncode == 0, finished.stderr
    return run_dir.resolve()


def test_plain_run_writes_the_workflow_snapshots_stock_muscle_manager_writes(
    persistent_database_url: str, tmp_path: Path, stock_run: Path
) -> None:
    run_dir = tmp_path / "run"
    finished = simulation.run(
        simulation.manage_command(persistent_database_url, run_dir), cwd=tmp_path
    )

    assert finished.returncode == 0, finished.stderr
    assert f"campaign '{MODEL}', run 1;" in finished.stderr
    run_dir = run_dir.resolve()
    written = simulation.resume_mappings(run_dir)
    assert len(written) == DEFAULT_RUN_WORKFLOW_SNAPSHOTS
    assert written == simulation.resume_mappings(stock_run)
    assert (run_dir / simulation.FINAL_STATE).read_bytes() == (
        stock_run / simulation.FINAL_STATE
    ).read_bytes()

    with DatabaseReader(persistent_database_url) as reader:
        [campaign] = reader.campaigns()
        recorded = reader.workflow_snapshots(MODEL)
    assert campaign.name == MODEL
    [run] = campaign.runs
    assert (run.number, run.status, run.resumed_from) == (1, "ended", None)
    assert run.workflow_snapshot_count == DEFAULT_RUN_WORKFLOW_SNAPSHOTS
    files = sorted((run_dir / "snapshots").glob("snapshot_*.ymmsl"))
    assert sorted(snapshot.path for snapshot in recorded) == files
    for snapshot in recorded:
        assert snapshot.path is not None
        in_file = ymmsl.load(snapshot.path).resume
        assert {str(k): str(v) for k, v in in_file.items()} == {
            str(k): str(v) for k, v in snapshot.resume.items()
        }


def test_killed_manager_resumes_with_resume_latest_to_the_same_result(
    persistent_database_url: str, tmp_path: Path, stock_run: Path
) -> None:
    # slow enough that the run is still going when the readers look at it
    slow = simulation.slow_overlay(tmp_path, step_sleep=0.04)
    first_dir = tmp_path / "run1"
    command = simulation.manage_command(
        persistent_database_url, first_dir, slow, options=["--resume-latest"]
    )
    log = tmp_path / "run1.log"
    with simulation.started(command, tmp_path, log) as manager:
        simulation.wait_for_workflow_snapshots(first_dir, 2, manager, timeout=90)
        # readers work while the manager writes
        with DatabaseReader(persistent_database_url) as reader:
            [campaign] = reader.campaigns()
            assert campaign.runs[0].status == "running"
            assert len(reader.workflow_snapshots(MODEL)) >= 2
        simulation.kill_group(manager)
        assert manager.returncode == -9
        assert simulation.group_gone(manager.pid)
    first_log = log.read_text()
    assert "has no workflow snapshot" in first_log
    assert "starting from scratch" in first_log
    assert "Simulation completed" not in first_log

    with DatabaseReader(persistent_database_url) as reader:
        before = reader.workflow_snapshots(MODEL)
    newest = before[-1]
    assert newest.run == 1

    second_dir = tmp_path / "run2"
    finished = simulation.run(
        # without the sleep: it only ever changed the wallclock time
        simulation.manage_command(
            persistent_database_url, second_dir, options=["--resume-latest"]
        ),
        cwd=tmp_path,
    )

    assert finished.returncode == 0, finished.stderr
    assert f"resuming from workflow snapshot {newest.id} of run 1" in finished.stderr
    assert (second_dir / simulation.FINAL_STATE).read_bytes() == (
        stock_run / simulation.FINAL_STATE
    ).read_bytes()
    with DatabaseReader(persistent_database_url) as reader:
        [campaign] = reader.campaigns()
        after = reader.workflow_snapshots(MODEL)
    first, second = campaign.runs
    assert (first.status, first.resumed_from) == ("interrupted", None)
    assert (second.status, second.resumed_from, second.resumed_from_run) == (
        "ended",
        newest.id,
        1,
    )
    assert after[-1].run == 2
    assert second.workflow_snapshot_count == len(after) - len(before) > 0
    resume_file = second_dir.resolve() / f"snapreg_resume_{newest.id}.ymmsl"
    assert {str(k): str(v) for k, v in ymmsl.load(resume_file).resume.items()} == {
        str(k): str(v) for k, v in newest.resume.items()
    }


def test_resume_latest_falls_back_past_a_workflow_snapshot_whose_file_is_gone(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    first_dir = tmp_path / "run1"
    first = simulation.run(simulation.manage_command(url, first_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    final_state = (first_dir / simulation.FINAL_STATE).read_bytes()
    with DatabaseReader(url) as reader:
        *_, previous, newest = reader.workflow_snapshots(MODEL)
    needed_before = {
        node.snapshot.snapshot_filename
        for node in previous.nodes
        if not node.is_restart
    }
    # a member file only the newest needs: a purge of scratch space took it
    lost = next(
        node
        for node in newest.nodes
        if not node.is_restart and node.snapshot.snapshot_filename not in needed_before
    )
    Path(lost.snapshot.snapshot_filename).unlink()

    second_dir = tmp_path / "run2"
    second = simulation.run(
        simulation.manage_command(url, second_dir, options=["--resume-latest"]),
        cwd=tmp_path,
    )

    assert second.returncode == 0, second.stderr
    assert (
        f"snapreg: skipped workflow snapshot {newest.id}: {lost.instance}:"
        f" {lost.snapshot.snapshot_filename} is missing\n"
    ) in second.stderr
    assert f"resuming from workflow snapshot {previous.id} of run 1" in second.stderr
    assert (second_dir / simulation.FINAL_STATE).read_bytes() == final_state
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
        every = reader.workflow_snapshots(MODEL)
    assert [(run.number, run.resumed_from) for run in campaign.runs] == [
        (1, None),
        (2, previous.id),
    ]

    # every restart point lost: refused, unless told to start from scratch
    for snapshot in every:
        for node in snapshot.nodes:
            if not node.is_restart:
                Path(node.snapshot.snapshot_filename).unlink(missing_ok=True)
    refused = simulation.run(
        simulation.manage_command(url, tmp_path / "run3", options=["--resume-latest"]),
        cwd=tmp_path,
    )
    assert refused.returncode == 1, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"snapreg: error: none of the {len(every)} workflow snapshots of campaign"
        f" '{MODEL}' is resumable"
    ), last
    assert "--or-from-scratch" in last
    scratch_dir = tmp_path / "run4"
    from_scratch = simulation.run(
        simulation.manage_command(
            url, scratch_dir, options=["--resume-latest", "--or-from-scratch"]
        ),
        cwd=tmp_path,
    )
    assert from_scratch.returncode == 0, from_scratch.stderr
    assert "is resumable; starting from scratch (--or-from-scratch)" in (
        from_scratch.stderr
    )
    assert (scratch_dir / simulation.FINAL_STATE).read_bytes() == final_state
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
    assert [(run.number, run.resumed_from) for run in campaign.runs] == [
        (1, None),
        (2, previous.id),
        (3, None),
    ]


def test_resume_latest_refuses_while_the_previous_manager_still_runs(
    persistent_database_url: str, tmp_path: Path
) -> None:
    url = persistent_database_url
    # slow enough to outlast the two commands below on a busy machine
    slow = simulation.slow_overlay(tmp_path, step_sleep=1.0)
    first_dir = tmp_path / "run1"
    log = tmp_path / "run1.log"
    command = simulation.manage_command(url, first_dir, slow)
    with simulation.started(command, tmp_path, log) as manager:
        simulation.wait_for_workflow_snapshots(first_dir, 1, manager, timeout=90)
        refused = simulation.run(
            simulation.manage_command(
                url, tmp_path / "run2", options=["--resume-latest"]
            ),
            cwd=tmp_path,
        )
        assert refused.returncode == 1, refused.stderr
        [message] = refused.stderr.strip().splitlines()
        assert message.startswith("snapreg: error: run 1 of campaign"), message
        assert f"pid {manager.pid} on {socket.gethostname()}" in message
        assert "--force" in message
        assert manager.poll() is None  # the first manager goes on
        with DatabaseReader(url) as reader:
            [campaign] = reader.campaigns()
        assert [run.number for run in campaign.runs] == [1]  # no second run

        forced = simulation.run(
            simulation.manage_command(
                url, tmp_path / "run3", options=["--resume-latest", "--force"]
            ),
            cwd=tmp_path,
        )
        assert forced.returncode == 0, forced.stderr
        assert f"pid {manager.pid} on {socket.gethostname()}" in forced.stderr
        assert "resuming from workflow snapshot" in forced.stderr
        assert manager.poll() is None
    with DatabaseReader(url) as reader:
        [campaign] = reader.campaigns()
    assert [run.number for run in campaign.runs] == [1, 2]


def test_a_registry_that_cannot_open_does_not_leave_the_manager_hanging(
    tmp_path: Path,
) -> None:
    # The manager forks its instantiator and starts threads before it builds the
    # registry; when that fails, the command must still end, with one line.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    arguments = [
        "manage",
        "--db",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--start-all",
        "--run-dir",
        str(run_dir),
        *simulation.MODEL_FILES,
    ]
    script = textwrap.dedent(
        f"""
        import snapreg.muscle3.manage
        from snapreg.errors import WriterConflictError

        def refuse(*args, **kwargs):
            raise WriterConflictError("someone else writes this run")

        snapreg.muscle3.manage.SnapshotRegistry = refuse
        from snapreg.cli.main import main
        main({arguments!r})
        """
    )
    finished = simulation.run([sys.executable, "-c", script], tmp_path, timeout=60)

    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        "snapreg: error: someone else writes this run"
    )
    assert "Traceback" not in finished.stderr


def test_a_refused_registration_never_leaves_an_instance_waiting(
    tmp_path: Path,
) -> None:
    # MUSCLE3's request handler answers an instance only when register_snapshot
    # returns; refusals must be answered, logged in one line, and the run go on.
    model = tmp_path / "refused.ymmsl"
    component = Path(simulation.__file__).with_name("refused_snapshots.py")
    model.write_text(
        textwrap.dedent(
            f"""\
            ymmsl_version: v0.2
            models:
              refused:
                components:
                  solo:
                    ports: {{}}
                    description: sends metadata snapreg refuses
                    implementation: solo
            programs:
              solo:
                executable: {sys.executable}
                args: {component}
            resources:
              refused.solo:
                threads: 1
            """
        ),
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    command = simulation.snapreg_command(
        "manage", "--db", database, "--start-all", "--run-dir", str(run_dir), str(model)
    )
    finished = simulation.run(command, tmp_path, timeout=60)

    assert finished.returncode == 0, finished.stderr
    log = (run_dir / "muscle3_manager.log").read_text(encoding="utf-8")
    refusals = [line for line in log.splitlines() if "did not register" in line]
    assert len(refusals) == 3  # two refusals, one summary at the end
    assert "snapshot of solo (InvalidMetadataError: wallclock_time" in refusals[0]
    assert "snapshot of solo (InvalidMetadataError: " in refusals[1]
    assert "lower" in refusals[1]
    assert refusals[2].endswith(
        "did not register 2 snapshot(s) of this run; the"
        " errors were logged when they happened"
    )
    with DatabaseReader(database) as reader:
        (snapshot,) = reader.workflow_snapshots("refused")
        (campaign,) = reader.campaigns()
    assert {str(k): str(v) for k, v in snapshot.resume.items()} == {
        "solo": "/accepted/good.pack"
    }
    assert campaign.runs[0].status == "ended"


def test_without_muscle3_manage_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "libmuscle.manager.manager", None)
    outcome = invoke(
        capsys, "manage", "--db", f"sqlite:///{tmp_path / 'db'}", "x.ymmsl"
    )

    assert outcome.status == 1
    assert outcome.stderr.count("\n") == 1
    assert "pip install 'snapreg[muscle3]'" in outcome.stderr
    assert not (tmp_path / "db").exists()


def test_manage_refuses_a_database_url_it_cannot_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for url, message in [
        ("not a url", "not a database URL"),
        ("sqlite://", "in-memory SQLite database"),
        (f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}", "does not exist"),
    ]:
        outcome = invoke(
            capsys, "manage", "--db", url, "--start-all", *simulation.MODEL_FILES
        )
        assert outcome.status == 1, url
        assert outcome.stderr.startswith("snapreg: error: "), url
        assert message in outcome.stderr, url
        assert outcome.stderr.count("\n") == 1, url


def test_resume_latest_refuses_files_with_their_own_resume_section(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    resume = tmp_path / "resume.ymmsl"
    resume.write_text("ymmsl_version: v0.2\nresume:\n  macro: /x/macro_1.pack\n")
    outcome = invoke(
        capsys,
        "manage",
        "--db",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--resume-latest",
        "--start-all",
        *simulation.MODEL_FILES,
        str(resume),
    )

    assert outcome.status == 1
    assert "already have a resume section" in outcome.stderr


def test_manager_options_pass_through_with_their_own_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "db.sqlite"
    outcome = invoke(
        capsys, "manage", "--db", f"sqlite:///{database}", "--no-such-option", "x"
    )

    assert outcome.status == 2  # click's usage error, from muscle_manager's parser
    assert "Error: No such option" in outcome.stderr
    assert "--no-such-option" in outcome.stderr
    assert "Usage: snapreg manage" in outcome.stderr
    assert not database.exists()


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ((), "Missing argument 'YMMSL_FILES...'"),
        (("--start-all",), "Missing argument 'YMMSL_FILES...'"),
        (("--run-dir",), "requires an argument"),
        (("missing.ymmsl",), "does not exist"),
        (("--", "--help", "x.ymmsl"), "No such option '--help'"),
    ],
)
def test_manage_with_bad_arguments_prints_its_own_short_usage(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: tuple[str, ...],
    complaint: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "db.sqlite"
    outcome = invoke(capsys, "manage", "--db", f"sqlite:///{database}", *arguments)

    assert outcome.status == 2
    lines = outcome.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: snapreg manage [OPTIONS]")
    assert "Try 'snapreg manage --help' for help." in lines
    assert complaint in lines[-1]
    assert len(lines) <= 5, outcome.stderr  # not the manager's internal help
    assert "Run the MUSCLE3 Manager" not in outcome.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no run directory


@pytest.mark.parametrize(
    ("content", "options"),
    [
        ("ymmsl_version: v0.2\nmodels: [1, 2]\n", ()),
        ("ymmsl_version: v0.2\nmodels: [1, 2]\n", ("--resume-latest",)),
        ("not: [yaml\n", ()),
        ("ymmsl_version: v0.2\nsettings:\n  a: 1\n", ("--resume-latest",)),
    ],
    ids=["unrecognised", "unrecognised-resume", "not-yaml", "no-model-resume"],
)
def test_a_configuration_that_does_not_load_leaves_no_database_behind(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: str,
    options: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.ymmsl"
    broken.write_text(content, encoding="utf-8")
    database = tmp_path / "db.sqlite"
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    outcome = invoke(
        capsys,
        "manage",
        "--db",
        f"sqlite:///{database}",
        *options,
        "--start-all",
        "--run-dir",
        str(run_dir),
        str(broken),
    )

    assert outcome.status == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.ymmsl", "run"]


@pytest.mark.parametrize("command", ["manage", "import"])
def test_an_unknown_muscle3_release_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.setattr(snapreg.muscle3.compat, "installed_version", lambda: "0.12.0")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "configuration.ymmsl").write_text(
        (simulation.EXAMPLE / "rd.ymmsl").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    database = tmp_path / "db.sqlite"
    arguments = (
        ("--start-all", *simulation.MODEL_FILES)
        if command == "manage"
        else (str(tmp_path / "run"),)
    )

    outcome = invoke(capsys, command, "--db", f"sqlite:///{database}", *arguments)

    assert outcome.status == 1
    assert outcome.stderr.count("\n") == 1
    assert outcome.stderr.startswith(f"snapreg: error: snapreg {command} works with")
    assert "MUSCLE3 0.10 and 0.11, not the installed 0.12.0" in outcome.stderr
    assert "pip install 'snapreg[muscle3]'" in outcome.stderr
    assert not database.exists()


def test_the_installed_muscle3_is_a_supported_release() -> None:
    version = snapreg.muscle3.compat.installed_version()
    assert version is not None
    assert snapreg.muscle3.compat.is_supported(version)
    assert snapreg.muscle3.compat.check_version("this test") == version


def test_manage_help_names_the_manager_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcome = invoke(capsys, "manage", "--help")

    assert outcome.status == 0
    for option in (
        "--db",
        "--campaign",
        "--resume-latest",
        "--or-from-scratch",
        "--start-all",
        "muscle_manager",
    ):
        assert option in outcome.stdout


def test_policy_latest_writes_only_the_newest_restart_points(
    tmp_path: Path, stock_run: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'latest.sqlite'}"
    run_dir = tmp_path / "run"
    finished = simulation.run(
        simulation.manage_command(url, run_dir, options=("--policy", "latest")),
        cwd=tmp_path,
    )
    assert finished.returncode == 0, finished.stderr
    written = simulation.resume_mappings(run_dir.resolve())
    stock = simulation.resume_mappings(stock_run)
    # every restart point written is one stock MUSCLE3 writes too, and the newest
    # (the one a user resumes from after a crash) is among them
    assert written and set(written) <= set(stock)
    with DatabaseReader(url) as reader:
        newest = reader.workflow_snapshots(MODEL)[-1]
    assert newest.path is not None
    assert {str(k): str(v) for k, v in ymmsl.load(newest.path).resume.items()} == {
        str(k): str(v) for k, v in newest.resume.items()
    }


def test_stock_muscle_manager_resumes_from_a_file_snapreg_wrote(
    tmp_path: Path, stock_run: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'written.sqlite'}"
    first = tmp_path / "first"
    finished = simulation.run(simulation.manage_command(url, first), cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    with DatabaseReader(url) as reader:
        middle = reader.workflow_snapshots(MODEL)[2]  # t = 0.5: half way
    assert (
        middle.path is not None
        and middle.path.parent == (first / "snapshots").resolve()
    )
    # the file snapreg wrote, as it is, on stock muscle_manager's command line
    second = tmp_path / "second"
    resumed = simulation.run(
        simulation.stock_command(second, middle.path), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    log = (second / "instances" / "macro" / "stderr.txt").read_text()
    assert "Resumed from snapshot at t=0.5" in log, log[-2000:]
    assert (second / simulation.FINAL_STATE).read_bytes() == (
        stock_run / simulation.FINAL_STATE
    ).read_bytes()
