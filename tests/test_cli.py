"""The `snapreg` commands: what they print, their JSON, and their errors.

Most tests read a small campaign written through the registry itself (two runs, the
second resumed from the first, a workflow snapshot with restart members), on SQLite
and PostgreSQL. One test exports a workflow snapshot of a real run with its
configuration and runs it with the stock `muscle_manager`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import pytest
import ymmsl
from sqlalchemy import create_engine, inspect

from snapreg import SnapshotMetadata, SnapshotRegistry
from snapreg.cli.main import cli
from snapreg.errors import NotFoundError
from snapreg.storage import versions
from snapreg.storage.versions import head_revision
from snapreg.tools import reader
from support import simulation
from support.command_line import Outcome, invoke

CAMPAIGN = "rd"
INSTANCES = ["macro", "micro[0]", "micro[1]", "micro[2]"]


@dataclass(frozen=True)
class Campaign:
    """A campaign written for the tests, and the ids of its workflow snapshots.

    Run 1: ``with_restarts`` (macro and three restart members), then ``first``
    and ``second``; run 2, resumed from ``second``: ``resumed``. Every snapshot's
    file is written in ``files`` before it is registered, so every workflow
    snapshot is resumable.
    """

    url: str
    snapshot_folder: Path
    files: Path
    with_restarts: int
    first: int
    second: int
    resumed: int


def _snapshot_file(path: Path) -> str:
    path.write_bytes(f"state of {path.stem}".encode())
    return str(path)


def _macro(files: Path, count: int, time: float) -> SnapshotMetadata:
    return SnapshotMetadata(
        triggers=["simulation_time >= 0.1"],
        wallclock_time=1.0 + count,
        timestamp=time,
        next_timestamp=time + 0.1,
        port_message_counts={"state_out": [count] * 3, "state_in": [count] * 3},
        is_final_snapshot=False,
        snapshot_filename=_snapshot_file(files / f"macro_{count}_{time}.pack"),
    )


def _micro(files: Path, index: int, count: int, time: float) -> SnapshotMetadata:
    return SnapshotMetadata(
        triggers=["simulation_time >= 0.1"],
        wallclock_time=1.0 + count,
        timestamp=time,
        next_timestamp=None,
        port_message_counts={"initial_state": [count], "final_state": [count]},
        is_final_snapshot=True,
        snapshot_filename=_snapshot_file(files / f"micro-{index}_{count}_{time}.pack"),
    )


def _register_step(
    registry: SnapshotRegistry, files: Path, count: int, time: float
) -> int:
    for index in range(3):
        assert not registry.add_snapshot(
            f"micro[{index}]", _micro(files, index, count, time)
        )
    [found] = registry.add_snapshot("macro", _macro(files, count, time))
    return found.id


def _write_campaign(database_url: str, folder: Path) -> Campaign:
    configuration = ymmsl.load(simulation.EXAMPLE / "rd.ymmsl")
    snapshot_folder = folder / "snapshots"
    snapshot_folder.mkdir()
    files = folder / "data"
    files.mkdir()
    with SnapshotRegistry(
        configuration, snapshot_folder, database_url=database_url, campaign=CAMPAIGN
    ) as registry:
        [with_restarts] = registry.add_snapshot("macro", _macro(files, 0, 0.0))
        first = _register_step(registry, files, 1, 0.1)
        second = _register_step(registry, files, 2, 0.2)
    with SnapshotRegistry(
        configuration,
        snapshot_folder,
        database_url=database_url,
        campaign=CAMPAIGN,
        new_run=True,
        resumed_from=second,
    ) as registry:
        resumed = _register_step(registry, files, 1, 0.3)
    return Campaign(
        database_url,
        snapshot_folder,
        files,
        with_restarts.id,
        first,
        second,
        resumed,
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite-file", id="sqlite-file"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def campaign(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Campaign]:
    """Two runs of campaign ``rd``, shared by the tests that only read them."""
    folder = tmp_path_factory.mktemp("campaign")
    if request.param == "sqlite-file":
        yield _write_campaign(f"sqlite:///{folder / 'campaign.sqlite'}", folder)
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield _write_campaign(server.url_for(name), folder)
    finally:
        server.drop_database(name)


@pytest.fixture
def own_campaign(persistent_database_url: str, tmp_path: Path) -> Campaign:
    """The same campaign, for a test that adds to it."""
    return _write_campaign(persistent_database_url, tmp_path)


def _json(outcome: Outcome) -> object:
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def _error(outcome: Outcome) -> str:
    """The error line, checked to be one line with a non-zero status."""
    assert outcome.status == 1, outcome.stdout
    assert outcome.stdout == ""
    assert outcome.stderr.startswith("snapreg: error: ")
    assert outcome.stderr.count("\n") == 1, outcome.stderr
    return outcome.stderr


# ------------------------------------------------------------------- campaigns


def test_campaigns_json_shows_runs_lineage_and_counts(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    [found] = _json(invoke(capsys, "campaigns", "--db", campaign.url, "--json"))

    assert found["name"] == CAMPAIGN
    first, second = found["runs"]
    assert first["number"] == 1 and second["number"] == 2
    assert first["resumed_from"] is None
    assert second["resumed_from"] == {"workflow_snapshot": campaign.second, "run": 1}
    assert (first["snapshots"], first["workflow_snapshots"]) == (9, 3)
    assert (second["snapshots"], second["workflow_snapshots"]) == (4, 1)
    assert (found["snapshots"], found["workflow_snapshots"]) == (13, 4)
    assert first["status"] == second["status"] == "ended"
    assert first["snapshot_folder"] == str(campaign.snapshot_folder.resolve())
    last = datetime.fromisoformat(found["last_activity"])
    assert last == max(
        datetime.fromisoformat(run["last_activity"]) for run in found["runs"]
    )
    assert last.tzinfo is not None


def test_campaigns_table_names_the_lineage(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(capsys, "campaigns", "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert f"Campaign {CAMPAIGN}: 2 runs, 4 workflow snapshots" in outcome.stdout
    assert "scratch" in outcome.stdout
    assert f"#{campaign.second} (run 1)" in outcome.stdout


def test_campaigns_of_an_empty_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    assert invoke(capsys, "db", "upgrade", "--db", url).status == 0

    assert _json(invoke(capsys, "campaigns", "--db", url, "--json")) == []
    assert "No campaigns" in invoke(capsys, "campaigns", "--db", url).stdout
    assert "has no campaigns yet" in _error(invoke(capsys, "workflows", "--db", url))


# ------------------------------------------------------------------- workflows


def test_workflows_json_lists_members_newest_last(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    found = _json(invoke(capsys, "workflows", "--db", campaign.url, "--json"))

    assert isinstance(found, list)
    assert [item["id"] for item in found] == [
        campaign.with_restarts,
        campaign.first,
        campaign.second,
        campaign.resumed,
    ]
    assert [item["run"] for item in found] == [1, 1, 1, 2]
    for item in found:
        assert set(item) >= {"id", "run", "created_at", "path", "members"}
        assert datetime.fromisoformat(item["created_at"]).tzinfo is not None
        assert Path(item["path"]).parent == campaign.snapshot_folder.resolve()
        assert Path(item["path"]).is_file()
        assert sorted(item["members"]) == INSTANCES
    assert found[0]["members"] == {
        "macro": str(campaign.files / "macro_0_0.0.pack"),
        "micro[0]": None,
        "micro[1]": None,
        "micro[2]": None,
    }
    assert found[3]["members"]["micro[2]"] == str(campaign.files / "micro-2_1_0.3.pack")


def test_workflows_of_one_run(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    found = _json(
        invoke(capsys, "workflows", "--db", campaign.url, "--run", "2", "--json")
    )

    assert [item["id"] for item in found] == [campaign.resumed]
    assert "has no run 7" in _error(
        invoke(capsys, "workflows", "--db", campaign.url, "--run", "7")
    )


def test_workflows_table(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # room for the long paths of tmp_path
    outcome = invoke(capsys, "workflows", "--db", campaign.url, "--campaign", CAMPAIGN)

    assert outcome.status == 0, outcome.stderr
    assert f"Workflow snapshots of campaign {CAMPAIGN}" in outcome.stdout
    assert "4 (3 from scratch)" in outcome.stdout
    for path in campaign.snapshot_folder.glob("snapshot_*.ymmsl"):
        assert path.name in outcome.stdout


# ------------------------------------------------------------------------ show


def test_show_json_has_members_triggers_times_and_file(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    shown = _json(
        invoke(
            capsys, "show", str(campaign.with_restarts), "--db", campaign.url, "--json"
        )
    )

    assert isinstance(shown, dict)
    assert shown["id"] == campaign.with_restarts
    assert shown["file_exists"] is True
    assert shown["triggers"] == {
        "Instance start": ["micro[0]", "micro[1]", "micro[2]"],
        "simulation_time >= 0.1": ["macro"],
    }
    nodes = {node["instance"]: node for node in shown["nodes"]}
    assert nodes["macro"]["num"] == 2 and not nodes["macro"]["is_restart"]
    assert nodes["macro"]["timestamp"] == 0.0
    assert (
        nodes["micro[1]"]["is_restart"]
        and nodes["micro[1]"]["snapshot_filename"] is None
    )
    assert shown["description"].startswith("Workflow snapshot for reaction_diffusion")
    assert shown["members"]["micro[0]"] is None


def test_show_table(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # room for the long paths of tmp_path
    outcome = invoke(capsys, "show", str(campaign.first), "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert f"Workflow snapshot {campaign.first} of campaign '{CAMPAIGN}', run 1" in (
        outcome.stdout
    )
    assert "simulation_time >= 0.1 (macro, micro[0], micro[1], micro[2])" in (
        outcome.stdout
    )
    assert str(campaign.files / "micro-1_1_0.1.pack") in outcome.stdout


# ---------------------------------------------------------------------- export


def test_export_writes_the_resume_section_without_restart_members(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(
        capsys, "export", str(campaign.with_restarts), "--db", campaign.url
    )

    assert outcome.status == 0, outcome.stderr
    exported = ymmsl.load(outcome.stdout)
    assert {str(k): str(v) for k, v in exported.resume.items()} == {
        "macro": str(campaign.files / "macro_0_0.0.pack")
    }
    [own_file] = [
        item["path"]
        for item in _json(invoke(capsys, "workflows", "--db", campaign.url, "--json"))
        if item["id"] == campaign.with_restarts
    ]
    assert outcome.stdout == Path(own_file).read_text()


def test_export_latest_to_a_file(
    capsys: pytest.CaptureFixture[str], campaign: Campaign, tmp_path: Path
) -> None:
    output = tmp_path / "resume.ymmsl"
    result = _json(
        invoke(
            capsys,
            "export",
            "--latest",
            "-o",
            str(output),
            "--db",
            campaign.url,
            "--json",
        )
    )

    assert isinstance(result, dict)
    assert (result["id"], result["run"], result["output"]) == (
        campaign.resumed,
        2,
        str(output),
    )
    assert output.read_text() == result["ymmsl"]
    by_id = invoke(capsys, "export", str(campaign.resumed), "--db", campaign.url)
    assert by_id.stdout == output.read_text()


def test_export_with_config_is_the_run_configuration_with_this_resume_section(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(
        capsys, "export", str(campaign.first), "--with-config", "--db", campaign.url
    )

    assert outcome.status == 0, outcome.stderr
    exported = ymmsl.load(outcome.stdout)
    assert "reaction_diffusion" in exported.models
    assert set(exported.programs) == {"rd_diffusion", "rd_reaction"}
    assert {str(k): str(v) for k, v in exported.resume.items()} == {
        "macro": str(campaign.files / "macro_1_0.1.pack"),
        **{
            f"micro[{i}]": str(campaign.files / f"micro-{i}_1_0.1.pack")
            for i in range(3)
        },
    }


def test_export_needs_exactly_one_of_id_and_latest(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    for arguments in (["1", "--latest"], []):
        outcome = invoke(capsys, "export", *arguments, "--db", campaign.url)
        assert outcome.status == 2
        assert "either a workflow snapshot ID or --latest" in outcome.stderr


# --------------------------------------------------------------------- history


def test_history_json_has_retired_nodes_and_consistent_peers(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    nodes = _json(invoke(capsys, "history", "micro[1]", "--db", campaign.url, "--json"))

    assert isinstance(nodes, list)
    assert [(node["run"], node["num"]) for node in nodes] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
    ]
    assert [node["is_restart"] for node in nodes] == [True, False, False, True, False]
    assert [node["active"] for node in nodes] == [False, False, True, False, True]
    assert nodes[0]["retired_at"] is not None and nodes[2]["retired_at"] is None
    # the restart node was consistent with macro's first snapshot (zero counts)
    assert nodes[0]["consistent_with"]["macro"] == [1, 2]
    assert nodes[1]["consistent_with"] == {"macro": [3]}
    assert nodes[4]["consistent_with"] == {"macro": [2]}


def test_history_of_one_run_as_a_table(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(capsys, "history", "macro", "--run", "1", "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert f"macro in run 1 of campaign {CAMPAIGN}" in outcome.stdout
    assert "run 2" not in outcome.stdout
    assert "retired" in outcome.stdout and "active" in outcome.stdout
    assert "micro[0] #3" in outcome.stdout


def test_history_of_an_unknown_instance(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    assert "micro[0..2]" in _error(
        invoke(capsys, "history", "micro[5]", "--db", campaign.url)
    )
    assert "is not in model" in _error(
        invoke(capsys, "history", "meso", "--db", campaign.url)
    )


# -------------------------------------------------------------------------- db


def test_db_current_and_upgrade(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "new.sqlite"
    url = f"sqlite:///{database}"

    assert "no database at" in _error(invoke(capsys, "db", "current", "--db", url))
    assert not database.exists()
    created = _json(invoke(capsys, "db", "upgrade", "--db", url, "--json"))
    assert created == {"location": url, "revision": head_revision(), "previous": None}
    current = _json(invoke(capsys, "db", "current", "--db", url, "--json"))
    assert current == {
        "location": url,
        "revision": head_revision(),
        "head": head_revision(),
        "up_to_date": True,
    }
    again = invoke(capsys, "db", "upgrade", "--db", url)
    assert again.status == 0 and "the newest" in again.stdout
    text = invoke(capsys, "db", "current", "--db", url)
    assert f"location: {url}" in text.stdout and "up to date" in text.stdout


@pytest.mark.postgres
def test_db_upgrade_creates_the_schema_in_an_empty_postgresql_database(
    capsys: pytest.CaptureFixture[str], empty_postgres_url: str
) -> None:
    message = _error(invoke(capsys, "campaigns", "--db", empty_postgres_url))
    assert "holds no snapreg data yet" in message
    assert "snapreg db upgrade --db" in message
    assert (
        _json(invoke(capsys, "db", "current", "--db", empty_postgres_url, "--json"))[
            "revision"
        ]
        is None
    )
    engine = create_engine(empty_postgres_url)
    try:
        assert not inspect(engine).has_table("campaign")  # readers created nothing
    finally:
        engine.dispose()

    assert invoke(capsys, "db", "upgrade", "--db", empty_postgres_url).status == 0
    assert (
        _json(invoke(capsys, "campaigns", "--db", empty_postgres_url, "--json")) == []
    )


# ---------------------------------------------------------------------- errors


def test_an_old_schema_names_the_upgrade_command(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if this snapreg had a newer revision than the one the database was
    # migrated to; the readers must refuse it and never migrate it themselves.
    current = head_revision()
    monkeypatch.setattr(reader, "head_revision", lambda: "9999_future")
    monkeypatch.setattr(versions, "head_revision", lambda: "9999_future")
    monkeypatch.setattr(versions, "known_revisions", lambda: {current, "9999_future"})

    for command in (["campaigns"], ["workflows"], ["show", "1"], ["history", "macro"]):
        message = _error(invoke(capsys, *command, "--db", campaign.url))
        assert f"schema revision {current}, older than 9999_future" in message
        assert f"upgrade it with: snapreg db upgrade --db '{campaign.url}'" in message
    status = _json(invoke(capsys, "db", "current", "--db", campaign.url, "--json"))
    assert status["up_to_date"] is False


def test_a_newer_schema_is_refused(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(versions, "head_revision", lambda: "0000_past")
    monkeypatch.setattr(versions, "known_revisions", lambda: {"0000_past"})

    assert "newer than this snapreg knows" in _error(
        invoke(capsys, "workflows", "--db", campaign.url)
    )


def test_unknown_campaign_and_ids(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    message = _error(
        invoke(capsys, "workflows", "--db", campaign.url, "--campaign", "x")
    )
    assert "no campaign 'x'" in message and f"campaigns: {CAMPAIGN}" in message
    assert "no workflow snapshot 999" in _error(
        invoke(capsys, "show", "999", "--db", campaign.url)
    )
    assert "no workflow snapshot 999" in _error(
        invoke(capsys, "export", "999", "--db", campaign.url)
    )
    assert "no campaign 'y'" in _error(
        invoke(
            capsys, "show", str(campaign.first), "--db", campaign.url, "--campaign", "y"
        )
    )


# Beyond a 64-bit integer: SQLite raised OverflowError on each (issue 12).
ABSURD = str(10**30)


@pytest.mark.parametrize(
    ("command", "parameter"),
    [
        (["show", str(2**63)], "'ID'"),
        (["export", str(2**63)], "'[ID]'"),
        (["workflows", "--run", ABSURD], "'--run'"),
        (["history", "macro", "--run", ABSURD], "'--run'"),
        (["explain", "--run", ABSURD], "'--run'"),
        (["explain", "--candidates", ABSURD], "'--candidates'"),
        (["plot", "--run", ABSURD], "'--run'"),
        (["gc", "--keep", "99999999999999999999"], "'--keep'"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_absurd_numbers_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    command: list[str],
    parameter: str,
) -> None:
    outcome = invoke(capsys, *command, "--db", campaign.url)

    assert outcome.status == 2, outcome.stderr
    assert f"Invalid value for {parameter}" in outcome.stderr
    assert "is not in the range" in outcome.stderr


def _integer_parameters(
    command: click.Command, path: list[str]
) -> Iterator[tuple[list[str], click.Parameter]]:
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):
            subcommand = command.get_command(context, name)
            assert subcommand is not None, name
            yield from _integer_parameters(subcommand, [*path, name])
        return
    for parameter in command.params:
        if isinstance(parameter.type, click.types.IntParamType):
            yield path, parameter


def test_every_integer_parameter_of_every_command_refuses_absurd_numbers(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # had a command gone on, no database is here
    checked = []
    for path, parameter in _integer_parameters(cli, []):
        command: click.Command = cli
        for name in path:
            assert isinstance(command, click.Group)
            found = command.get_command(click.Context(command), name)
            assert found is not None, path
            command = found
        arguments = [
            "x" for other in command.params if isinstance(other, click.Argument)
        ]
        if isinstance(parameter, click.Argument):
            # the integer replaces its own place among the positional arguments
            position = [
                other for other in command.params if isinstance(other, click.Argument)
            ].index(parameter)
            arguments[position] = ABSURD
        else:
            arguments += [parameter.opts[0], ABSURD]
        outcome = invoke(capsys, *path, *arguments)
        name = parameter.opts[0] if isinstance(parameter, click.Option) else "ID"
        assert outcome.status == 2, (path, name, outcome.stderr)
        assert "is not in the range" in outcome.stderr, (path, name)
        checked.append(" ".join([*path, name]))
    # the walk found the commands of issue 12's report and the rest
    assert {"show ID", "workflows --run", "history --run", "gc --keep"} <= set(
        checked
    ), checked


@pytest.mark.parametrize(
    "command",
    [
        ["show", str(2**63 - 1)],
        ["export", str(2**63 - 1)],
        ["workflows", "--run", str(2**31 - 1)],
        ["history", "macro", "--run", str(2**31 - 1)],
        ["explain", "--run", str(2**31 - 1)],
    ],
    ids=" ".join,
)
def test_the_largest_numbers_allowed_are_not_found(
    capsys: pytest.CaptureFixture[str], campaign: Campaign, command: list[str]
) -> None:
    message = _error(invoke(capsys, *command, "--db", campaign.url))
    assert "no workflow snapshot" in message or "has no run" in message


def test_readers_take_absurd_numbers_as_not_found(campaign: Campaign) -> None:
    with reader.DatabaseReader(campaign.url) as database_reader:
        for number in (2**63, 10**30, -(2**63) - 1):
            with pytest.raises(NotFoundError, match=f"no workflow snapshot {number}"):
                database_reader.workflow_snapshot(number)
        for run in (2**31, 10**30):
            with pytest.raises(NotFoundError, match=f"has no run {run}"):
                database_reader.workflow_snapshots(CAMPAIGN, run=run)
            with pytest.raises(NotFoundError, match=f"has no run {run}"):
                database_reader.instance_history(CAMPAIGN, "macro", run=run)


def test_an_absurd_sql_parameter_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(
        capsys, "sql", "SELECT :x AS x", "-p", f"x={ABSURD}", "--db", campaign.url
    )

    assert outcome.status == 2, outcome.stderr
    assert "--param" in outcome.stderr and "64-bit" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    largest = invoke(
        capsys, "sql", "SELECT :x AS x", "-p", f"x={2**63 - 1}", "--db", campaign.url
    )
    assert largest.status == 0 and str(2**63 - 1) in largest.stdout


def test_several_campaigns_need_campaign(
    capsys: pytest.CaptureFixture[str], own_campaign: Campaign, tmp_path: Path
) -> None:
    campaign = own_campaign
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    configuration = ymmsl.load(simulation.EXAMPLE / "rd.ymmsl")
    with SnapshotRegistry(
        configuration, other_folder, database_url=campaign.url, campaign="other"
    ) as registry:
        registry.add_snapshot("macro", _macro(campaign.files, 0, 0.0))

    message = _error(invoke(capsys, "workflows", "--db", campaign.url))
    assert "2 campaigns; choose one with --campaign (other, rd)" in message
    found = _json(
        invoke(
            capsys, "workflows", "--db", campaign.url, "--campaign", "other", "--json"
        )
    )
    assert len(found) == 1
    assert f"no workflow snapshot {campaign.first} in campaign 'other'" in _error(
        invoke(
            capsys,
            "show",
            str(campaign.first),
            "--db",
            campaign.url,
            "--campaign",
            "other",
        )
    )


def test_missing_database_is_an_error_and_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "nothing.sqlite"
    url = f"sqlite:///{database}"
    for command in (
        ["campaigns"],
        ["workflows"],
        ["show", "1"],
        ["export", "--latest"],
        ["history", "macro"],
        ["db", "current"],
    ):
        assert f"no database at {database}" in _error(
            invoke(capsys, *command, "--db", url)
        )
    assert not database.exists()


def test_a_file_that_is_no_snapreg_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "other.sqlite"
    sqlite3.connect(database).close()

    message = _error(invoke(capsys, "campaigns", "--db", f"sqlite:///{database}"))
    assert "holds no snapreg data yet" in message
    assert "snapreg db upgrade" in message


def test_wrong_urls_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for url, expected in [
        ("not a url", "not a database URL"),
        ("nosuchdriver://host/db", "nosuchdriver"),
        ("sqlite://", "in-memory SQLite database has nothing to read"),
        ("postgresql://nobody@127.0.0.1:1/none", "cannot read database"),
    ]:
        assert expected in _error(invoke(capsys, "campaigns", "--db", url)), url


def test_default_database_is_snapreg_sqlite_here_unless_the_variable_is_set(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("SNAPREG_DATABASE_URL", raising=False)
    assert f"no database at {folder / 'snapreg.sqlite'}" in _error(
        invoke(capsys, "campaigns")
    )

    monkeypatch.setenv("SNAPREG_DATABASE_URL", campaign.url)
    [found] = _json(invoke(capsys, "campaigns", "--json"))
    assert found["name"] == CAMPAIGN


@pytest.mark.slow  # runs the installed command
def test_the_console_script_prints_no_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    finished = simulation.run(
        simulation.snapreg_command("workflows", "--db", f"sqlite:///{missing}"),
        cwd=tmp_path,
        timeout=60,
    )

    assert finished.returncode == 1
    assert finished.stderr == (
        f"snapreg: error: no database at {missing} (snapreg manage creates it on its"
        " first run; choose another one with --db or $SNAPREG_DATABASE_URL)\n"
    )
    listing = simulation.run(simulation.snapreg_command("--help"), tmp_path, 60)
    for command in (
        "manage",
        "db",
        "campaigns",
        "workflows",
        "show",
        "export",
        "history",
    ):
        assert command in listing.stdout


# ------------------------------------------------------------ real simulation


@pytest.mark.slow  # real MUSCLE3 runs
def test_export_with_config_of_a_real_run_runs_in_stock_muscle_manager(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'snapreg.sqlite'}"
    first = simulation.run(simulation.manage_command(url, tmp_path / "run1"), tmp_path)
    assert first.returncode == 0, first.stderr
    snapshots = _json(invoke(capsys, "workflows", "--db", url, "--json"))
    assert isinstance(snapshots, list)
    assert all(
        Path(member).name.endswith(".pack")
        for item in snapshots
        for member in item["members"].values()
    )
    halfway = snapshots[len(snapshots) // 2]
    configuration = tmp_path / "resume-with-config.ymmsl"
    exported = invoke(
        capsys,
        "export",
        str(halfway["id"]),
        "--with-config",
        "-o",
        str(configuration),
        "--db",
        url,
    )
    assert exported.status == 0, exported.stderr

    (tmp_path / "run2").mkdir()
    second = simulation.run(
        [
            str(simulation.VENV_BIN / "muscle_manager"),
            "--start-all",
            "--run-dir",
            str(tmp_path / "run2"),
            str(configuration),
        ],
        tmp_path,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert (tmp_path / "run2" / simulation.FINAL_STATE).read_bytes() == (
        tmp_path / "run1" / simulation.FINAL_STATE
    ).read_bytes()
