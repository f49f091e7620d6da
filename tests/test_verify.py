"""`snapreg verify`: rows edited by hand, for verify to find and name.

The campaign is two runs of a simulated macro-micro coupling (the first
materialising every workflow snapshot, the second only the newest), laid out as
MUSCLE3 lays out a run directory, with a real snapshot file of its own size for
every registration. Each test edits one thing, as someone with ``sqlite3`` or
``psql`` (or a failing disk) would, and checks that verify names exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from snapreg import SnapshotRegistry
from snapreg.rules.metadata import coerce_metadata
from snapreg.storage import schema
from snapreg.storage.codecs import metadata_from_row
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.tools import verify_rows
from snapreg.tools.gc import plan_cleanup
from snapreg.tools.gc_delete import delete_files
from snapreg.tools.restart_points import resumability
from snapreg.tools.verify import Verification, verify_campaign
from support.command_line import Outcome, invoke
from support.streams import Stream, all_streams, macro_micro

STREAM = macro_micro(5, num_micro=3, num_steps=6)
CAMPAIGN = "verify"


@dataclass
class Campaign:
    url: str
    run_dirs: list[Path]


def register_run(
    url: str,
    stream: Stream,
    run_dir: Path,
    *,
    new_run: bool,
    policy: str = "all",
    campaign: str = CAMPAIGN,
) -> None:
    """Register a stream as a run in a MUSCLE3-style run directory, with files."""
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(ymmsl.dump(stream.config))
    with SnapshotRegistry(
        stream.config,
        run_dir / "snapshots",
        database_url=url,
        campaign=campaign,
        new_run=new_run,
        policy=policy,
    ) as registry:
        for index, (instance, fields) in enumerate(stream.registrations):
            folder = run_dir / "instances" / instance / "snapshots"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{instance}_{index + 1}.pack"
            path.write_bytes(b"s" * (100 + index))
            metadata = dataclasses.replace(
                coerce_metadata(fields), snapshot_filename=str(path)
            )
            registry.add_snapshot(instance, metadata)


@pytest.fixture
def campaign(persistent_database_url: str, tmp_path: Path) -> Campaign:
    runs = [tmp_path / "run1", tmp_path / "run2"]
    register_run(persistent_database_url, STREAM, runs[0], new_run=False)
    register_run(
        persistent_database_url, STREAM, runs[1], new_run=True, policy="latest"
    )
    return Campaign(persistent_database_url, runs)


@pytest.fixture
def sqlite_campaign(tmp_path: Path) -> Campaign:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    runs = [tmp_path / "run1", tmp_path / "run2"]
    register_run(url, STREAM, runs[0], new_run=False)
    register_run(url, STREAM, runs[1], new_run=True, policy="latest")
    return Campaign(url, runs)


def run_sql(url: str, statement: str, **parameters: Any) -> list[Any]:
    """Run SQL as a person would: a plain engine (SQLite: foreign keys off)."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), parameters)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def verify_json(capsys: pytest.CaptureFixture[str], url: str) -> tuple[int, Any]:
    outcome = invoke(capsys, "verify", "--db", url, "--json")
    assert outcome.stderr == "" or "warning" in outcome.stderr, outcome.stderr
    return outcome.status, json.loads(outcome.stdout)


def kinds(found: Verification) -> list[str]:
    return [problem.kind for problem in found.problems]


def newest_workflow_snapshot(url: str, run: int = 1) -> tuple[int, str, list[Any]]:
    """Id, path and members (id, instance, num, file) of a run's newest one."""
    [(snapshot_id, path)] = run_sql(
        url,
        "SELECT w.id, w.path FROM workflow_snapshot w JOIN run r ON r.id = w.run_id"
        " WHERE r.number = :run ORDER BY w.id DESC LIMIT 1",
        run=run,
    )
    members = run_sql(
        url,
        "SELECT n.id, n.instance, n.num, n.snapshot_filename"
        " FROM workflow_snapshot_member m JOIN snapshot_node n"
        " ON n.id = m.snapshot_node_id WHERE m.workflow_snapshot_id = :id"
        " ORDER BY n.id",
        id=snapshot_id,
    )
    return snapshot_id, path, members


# ------------------------------------------------------------------ clean


def test_a_clean_campaign_verifies_clean(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verify_json(capsys, campaign.url)

    assert status == 0
    assert found["clean"] is True
    assert found["problems"] == []
    assert found["no_longer_resumable"] == []
    [(nodes, pairs, snapshots, members)] = run_sql(
        campaign.url,
        "SELECT (SELECT count(*) FROM snapshot_node),"
        " (SELECT count(*) FROM consistent_pair),"
        " (SELECT count(*) FROM workflow_snapshot),"
        " (SELECT count(*) FROM workflow_snapshot_member m JOIN snapshot_node n"
        "  ON n.id = m.snapshot_node_id WHERE NOT n.is_restart)",
    )
    assert found["checked"] == {
        "runs": 2,
        "nodes": nodes,
        "consistent_pairs": pairs,
        "workflow_snapshots": snapshots,
        "workflow_snapshot_files": snapshots,
        "member_files": members,
    }
    assert snapshots > 10
    text_outcome = invoke(capsys, "verify", "--db", campaign.url)
    assert text_outcome.status == 0
    assert "No problems found." in text_outcome.stdout
    assert f"checked 2 runs, {nodes} snapshot nodes" in text_outcome.stdout


def test_every_generated_stream_verifies_clean_under_both_policies(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'streams.sqlite'}"
    streams = all_streams(4)
    for index, stream in enumerate(streams):
        policy = ("all", "latest")[index % 2]
        register_run(
            url,
            stream,
            tmp_path / f"run{index}",
            new_run=False,
            policy=policy,
            campaign=stream.name,
        )

    found = {stream.name: verify_campaign(url, stream.name) for stream in streams}

    assert {name: kinds(item) for name, item in found.items() if not item.clean} == {}
    assert all(
        item.nodes > len(item_stream.registrations)
        for item, item_stream in zip(found.values(), streams, strict=True)
    )
    assert sum(item.workflow_snapshots for item in found.values()) > 100


def test_streams_read_a_few_rows_at_a_time_agree(
    campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every stream runs through many fetches, interleaved, on one connection
    # (server-side cursors on PostgreSQL)
    whole = verify_campaign(campaign.url, CAMPAIGN)
    monkeypatch.setattr(verify_rows, "STREAM_OPTIONS", {"yield_per": 3})

    chunked = verify_campaign(campaign.url, CAMPAIGN)

    assert chunked == whole
    assert chunked.clean and chunked.nodes > 30


def test_verify_writes_nothing(
    sqlite_campaign: Campaign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "campaign.sqlite"
    wal = tmp_path / "campaign.sqlite-wal"
    before = (database.read_bytes(), database.stat().st_mtime_ns)
    assert not wal.exists() or wal.stat().st_size == 0
    snapshot_files = {
        path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.ymmsl")
    }

    assert invoke(capsys, "verify", "--db", sqlite_campaign.url).status == 0

    assert (database.read_bytes(), database.stat().st_mtime_ns) == before
    # reading a WAL database may leave SQLite's -shm and an empty -wal behind
    assert not wal.exists() or wal.stat().st_size == 0
    assert {
        path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.ymmsl")
    } == snapshot_files


# ------------------------------------------------------------ hand edits


def test_a_deleted_consistent_pair_is_missing(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    [(lower, higher)] = run_sql(
        campaign.url,
        "SELECT lower_node_id, higher_node_id FROM consistent_pair"
        " ORDER BY higher_node_id DESC, lower_node_id LIMIT 1",
    )
    run_sql(
        campaign.url,
        "DELETE FROM consistent_pair WHERE lower_node_id = :lower"
        " AND higher_node_id = :higher",
        lower=lower,
        higher=higher,
    )

    status, found = verify_json(capsys, campaign.url)

    assert status == 1
    [problem] = found["problems"]
    assert problem["kind"] == "missing_pair"
    assert problem["nodes"] == [lower, higher]
    assert problem["run"] == 2
    assert f"(node {lower})" in problem["message"]
    assert "no consistent_pair row holds them" in problem["message"]


def test_a_bogus_consistent_pair_is_unexplained(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    # two micros are not peers; macro #2 and micro[0]'s newest disagree on counts
    [(micro0,)] = run_sql(
        campaign.url,
        "SELECT max(id) FROM snapshot_node WHERE instance = 'micro[0]'",
    )
    [(micro1,)] = run_sql(
        campaign.url,
        "SELECT min(id) FROM snapshot_node WHERE instance = 'micro[1]'"
        " AND NOT is_restart",
    )
    [(macro,)] = run_sql(
        campaign.url,
        "SELECT n.id FROM snapshot_node n JOIN run r ON r.id = n.run_id"
        " WHERE r.number = 2 AND instance = 'macro' AND num = 2",
    )
    for lower, higher in sorted([sorted((micro1, micro0)), sorted((macro, micro0))]):
        run_sql(
            campaign.url,
            "INSERT INTO consistent_pair (lower_node_id, higher_node_id)"
            " VALUES (:lower, :higher)",
            lower=lower,
            higher=higher,
        )

    found = verify_campaign(campaign.url, CAMPAIGN)

    assert kinds(found) == ["unexplained_pair", "unexplained_pair"]
    by_nodes = {problem.nodes: problem.message for problem in found.problems}
    assert "are not peers" in by_nodes[tuple(sorted((micro1, micro0)))]
    message = by_nodes[(macro, micro0)]
    assert "the rules say they are not consistent" in message
    assert "macro.state_out -> micro.init_in" in message


def test_a_pair_the_rules_allow_but_the_registry_never_made_is_extra(
    campaign: Campaign,
) -> None:
    # restart nodes agree with every restart node, but these are in different runs
    [(first,), (second,)] = run_sql(
        campaign.url,
        "SELECT n.id FROM snapshot_node n JOIN run r ON r.id = n.run_id"
        " WHERE n.is_restart AND ((r.number = 1 AND n.instance = 'macro')"
        " OR (r.number = 2 AND n.instance = 'micro[0]')) ORDER BY n.id",
    )
    run_sql(
        campaign.url,
        "INSERT INTO consistent_pair (lower_node_id, higher_node_id)"
        " VALUES (:lower, :higher)",
        lower=first,
        higher=second,
    )

    [problem] = verify_campaign(campaign.url, CAMPAIGN).problems

    assert (problem.kind, problem.nodes, problem.run) == (
        "extra_pair",
        (first, second),
        2,
    )
    assert problem.message.endswith("they belong to different runs")


def test_workflow_snapshots_another_policy_would_not_find_are_extra(
    campaign: Campaign,
) -> None:
    # run 1 materialised every workflow snapshot; say it materialised the newest
    all_of_them = run_sql(
        campaign.url,
        "SELECT w.id FROM workflow_snapshot w JOIN run r ON r.id = w.run_id"
        " WHERE r.number = 1 ORDER BY w.id",
    )
    run_sql(campaign.url, "UPDATE run SET policy = 'latest' WHERE number = 1")

    found = verify_campaign(campaign.url, CAMPAIGN)

    assert set(kinds(found)) == {"extra_workflow_snapshot"}
    extra = {problem.workflow_snapshot for problem in found.problems}
    assert extra < {snapshot_id for (snapshot_id,) in all_of_them}
    assert all("policy latest" in problem.message for problem in found.problems)


def test_a_run_whose_policy_is_unknown_is_a_bad_row(campaign: Campaign) -> None:
    run_sql(campaign.url, "UPDATE run SET policy = 'some' WHERE number = 2")

    [problem] = verify_campaign(campaign.url, CAMPAIGN).problems

    assert (problem.kind, problem.run) == ("bad_row", 2)
    assert "its policy 'some' is none of all, latest" in problem.message


def test_inconsistent_members_are_named_with_their_workflow_snapshot(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot_id, path, members = newest_workflow_snapshot(campaign.url, run=1)
    micro = next(member for member in members if member[1] == "micro[1]")
    run_sql(
        campaign.url,
        "UPDATE snapshot_node SET port_message_counts = :counts WHERE id = :id",
        counts=json.dumps({"init_in": [99], "final_out": [99]}),
        id=micro[0],
    )

    status, found = verify_json(capsys, campaign.url)

    assert status == 1
    inconsistent = [
        problem
        for problem in found["problems"]
        if problem["kind"] == "inconsistent_members"
    ]
    assert snapshot_id in [problem["workflow_snapshot"] for problem in inconsistent]
    named = next(p for p in inconsistent if p["workflow_snapshot"] == snapshot_id)
    assert named["path"] == path
    assert micro[0] in named["nodes"]
    assert f"micro[1] #{micro[2]} (node {micro[0]})" in named["message"]
    # its stored pairs are no longer what the rules imply either
    assert "unexplained_pair" in {problem["kind"] for problem in found["problems"]}


def test_a_deleted_member_row_leaves_an_incomplete_workflow_snapshot(
    campaign: Campaign,
) -> None:
    snapshot_id, path, members = newest_workflow_snapshot(campaign.url, run=2)
    gone = next(member for member in members if member[1] == "micro[2]")
    run_sql(
        campaign.url,
        "DELETE FROM workflow_snapshot_member WHERE workflow_snapshot_id = :ws"
        " AND snapshot_node_id = :node",
        ws=snapshot_id,
        node=gone[0],
    )

    found = verify_campaign(campaign.url, CAMPAIGN)

    assert sorted(kinds(found)) == [
        "incomplete_members",
        "missing_workflow_snapshot",
        "workflow_file_differs",
    ]
    problems = {problem.kind: problem for problem in found.problems}
    incomplete = problems["incomplete_members"]
    assert incomplete.workflow_snapshot == snapshot_id
    assert incomplete.message.endswith("it has no member of micro[2]")
    assert path in incomplete.message
    assert set(problems["missing_workflow_snapshot"].nodes) == {
        member[0] for member in members
    }
    # the file still resumes micro[2]: it says more than its rows now do
    assert f"micro[2] from {gone[3]} (not in the rows)" in (
        problems["workflow_file_differs"].message
    )


def test_a_node_active_in_its_row_that_a_workflow_snapshot_retired(
    campaign: Campaign,
) -> None:
    [(node_id, instance, num)] = run_sql(
        campaign.url,
        "SELECT id, instance, num FROM snapshot_node WHERE retired_at IS NOT NULL"
        " AND NOT is_restart ORDER BY id LIMIT 1",
    )
    run_sql(
        campaign.url,
        "UPDATE snapshot_node SET retired_at = NULL WHERE id = :id",
        id=node_id,
    )

    found = verify_campaign(campaign.url, CAMPAIGN)

    [problem] = found.problems
    assert problem.kind == "retirement"
    assert problem.nodes[0] == node_id
    assert f"{instance} #{num} (node {node_id}) is active in its row" in (
        problem.message
    )


def test_a_node_out_of_order(sqlite_campaign: Campaign) -> None:
    [(node_id,)] = run_sql(
        sqlite_campaign.url,
        "SELECT max(id) FROM snapshot_node WHERE instance = 'macro'",
    )
    run_sql(
        sqlite_campaign.url,
        "UPDATE snapshot_node SET num = num + 5 WHERE id = :id",
        id=node_id,
    )

    found = verify_campaign(sqlite_campaign.url, CAMPAIGN)

    assert kinds(found)[0] == "node_order"
    assert found.problems[0].nodes == (node_id,)
    assert "node ids are not in registration order" in found.problems[0].message


# ------------------------------------------------------------------ files


def test_a_missing_workflow_snapshot_file(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot_id, path, _ = newest_workflow_snapshot(campaign.url, run=1)
    Path(path).unlink()

    outcome = invoke(capsys, "verify", "--db", campaign.url)

    assert outcome.status == 1
    assert "1 problem: workflow_file_missing 1" in outcome.stdout
    assert (
        f"workflow_file_missing: run 1: workflow snapshot {snapshot_id}'s file"
        f" {path} is missing"
    ) in outcome.stdout


def test_an_altered_workflow_snapshot_file(campaign: Campaign) -> None:
    snapshot_id, path, members = newest_workflow_snapshot(campaign.url, run=2)
    micro = next(member for member in members if member[1] == "micro[0]")
    file = Path(path)
    file.write_text(file.read_text().replace(micro[3], "/elsewhere/micro_0.pack"))

    found = verify_campaign(campaign.url, CAMPAIGN)

    [problem] = found.problems
    assert (problem.kind, problem.workflow_snapshot, problem.path) == (
        "workflow_file_differs",
        snapshot_id,
        path,
    )
    assert f"resumes micro[0] from /elsewhere/micro_0.pack (rows: {micro[3]})" in (
        problem.message
    )


def test_a_workflow_snapshot_file_of_another_model(sqlite_campaign: Campaign) -> None:
    snapshot_id, path, _ = newest_workflow_snapshot(sqlite_campaign.url, run=1)
    file = Path(path)
    # rewritten by ymmsl (not byte for byte the registry's text), another model
    config = ymmsl.load(file.read_text())
    config.description = config.description.replace("macro_micro", "other_model")
    file.write_text(ymmsl.dump(config))

    [problem] = verify_campaign(sqlite_campaign.url, CAMPAIGN).problems

    assert (problem.kind, problem.workflow_snapshot) == (
        "workflow_file_differs",
        snapshot_id,
    )
    assert "names model 'other_model', but the run's model is 'macro_micro'" in (
        problem.message
    )


def test_a_workflow_snapshot_file_reformatted_but_equal_is_fine(
    sqlite_campaign: Campaign,
) -> None:
    _, path, _ = newest_workflow_snapshot(sqlite_campaign.url, run=1)
    file = Path(path)
    file.write_text(ymmsl.dump(ymmsl.load(file.read_text())) + "\n# a comment\n")

    assert verify_campaign(sqlite_campaign.url, CAMPAIGN).clean


def test_truncated_and_lost_member_files(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot_id, _, members = newest_workflow_snapshot(campaign.url, run=1)
    truncated = Path(next(m[3] for m in members if m[1] == "macro"))
    truncated.write_bytes(truncated.read_bytes()[:10])
    lost = Path(next(m[3] for m in members if m[1] == "micro[1]"))
    lost.unlink()

    status, found = verify_json(capsys, campaign.url)

    assert status == 1
    by_kind = {problem["kind"]: problem for problem in found["problems"]}
    assert sorted(by_kind) == ["member_file_missing", "member_file_size"]
    size = by_kind["member_file_size"]
    assert size["path"] == str(truncated)
    assert snapshot_id in size["workflow_snapshots"]
    assert "is 10 bytes, not the" in size["message"]
    missing = by_kind["member_file_missing"]
    assert missing["path"] == str(lost)
    assert snapshot_id in missing["workflow_snapshots"]
    assert f"{lost} is missing" in missing["message"]
    # exactly the workflow snapshots that need the file are named
    with ReadOnlyStore(campaign.url) as store:
        needing = store.read(
            lambda session: session.scalars(
                select(schema.WorkflowSnapshotMemberRow.workflow_snapshot_id)
                .join(
                    schema.SnapshotNodeRow,
                    schema.SnapshotNodeRow.id
                    == schema.WorkflowSnapshotMemberRow.snapshot_node_id,
                )
                .where(schema.SnapshotNodeRow.snapshot_filename == str(lost))
            ).all()
        )
    assert sorted(missing["workflow_snapshots"]) == sorted(needing)


def test_files_gc_deleted_make_workflow_snapshots_no_longer_resumable(
    campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_cleanup(campaign.url, CAMPAIGN, keep=1)
    assert plan.deletable
    delete_files(campaign.url, plan)

    status, found = verify_json(capsys, campaign.url)

    assert status == 0
    assert found["problems"] == []
    listed = {
        snapshot_id
        for item in found["no_longer_resumable"]
        for snapshot_id in range(item["first"], item["last"] + 1)
    }
    engine = create_engine(campaign.url)
    with Session(engine) as session:
        campaign_id = session.scalars(select(schema.CampaignRow.id)).one()
        ids = session.scalars(select(schema.WorkflowSnapshotRow.id)).all()
        judged = resumability(session, campaign_id, ids)
    engine.dispose()
    assert listed == {item for item, found in judged.items() if not found.resumable}
    assert listed and len(listed) < len(ids)
    outcome = invoke(capsys, "verify", "--db", campaign.url)
    assert outcome.status == 0
    assert "No problems found." in outcome.stdout
    assert "can no longer be resumed from" in outcome.stdout


# ------------------------------------------------------- the database itself


def test_sqlite_dangling_rows_are_integrity_problems(sqlite_campaign: Campaign) -> None:
    [(node_id,)] = run_sql(
        sqlite_campaign.url,
        "SELECT max(higher_node_id) FROM consistent_pair",
    )
    # sqlite3's default: foreign keys are not enforced, so nothing cascades
    run_sql(sqlite_campaign.url, "DELETE FROM snapshot_node WHERE id = :id", id=node_id)

    found = verify_campaign(sqlite_campaign.url, CAMPAIGN)

    integrity = [p for p in found.problems if p.kind == "integrity"]
    assert integrity
    assert all(
        "refers to a snapshot_node row that does not exist" in p.message
        for p in integrity
    )
    assert any("table consistent_pair" in p.message for p in integrity)


def test_a_damaged_sqlite_file_is_an_integrity_problem(
    sqlite_campaign: Campaign, tmp_path: Path
) -> None:
    database = tmp_path / "campaign.sqlite"
    run_sql(sqlite_campaign.url, "PRAGMA wal_checkpoint(TRUNCATE)")
    [(page_size,)] = run_sql(sqlite_campaign.url, "PRAGMA page_size")
    [(root,)] = run_sql(
        sqlite_campaign.url,
        "SELECT rootpage FROM sqlite_master WHERE name ="
        " 'ix_consistent_pair_higher_node_id'",
    )
    with open(database, "r+b") as stream:
        stream.seek((root - 1) * page_size + 8)
        stream.write(b"\xff" * 64)

    found = verify_campaign(sqlite_campaign.url, CAMPAIGN)

    assert "integrity" in kinds(found)
    assert any("quick_check" in p.message for p in found.problems)


@pytest.mark.postgres
def test_postgresql_indexes_are_checked_with_amcheck_when_installed(
    postgres_url: str, tmp_path: Path
) -> None:
    register_run(postgres_url, STREAM, tmp_path / "run1", new_run=False)

    without = verify_campaign(postgres_url, CAMPAIGN)
    run_sql(postgres_url, "CREATE EXTENSION amcheck")
    with_amcheck = verify_campaign(postgres_url, CAMPAIGN)

    assert without.clean and with_amcheck.clean
    assert [note.split(":")[0] for note in without.notes] == [
        "PostgreSQL's indexes were not checked"
    ]
    assert with_amcheck.notes == ()


# ------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "arguments",
    [["--bogus"], ["extra"], ["--json", "--json=yes"], ["--campaign"]],
)
def test_usage_errors_exit_2(
    sqlite_campaign: Campaign,
    arguments: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcome = invoke(capsys, "verify", "--db", sqlite_campaign.url, *arguments)
    assert outcome.status == 2
    assert outcome.stdout == ""


def test_a_campaign_that_is_not_there_is_an_error(
    sqlite_campaign: Campaign, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome: Outcome = invoke(
        capsys, "verify", "--db", sqlite_campaign.url, "--campaign", "nope"
    )
    assert outcome.status == 1
    assert outcome.stderr.startswith("snapreg: error: no campaign 'nope'")
    assert outcome.stdout == ""


def test_progress_is_reported_up_to_every_node(sqlite_campaign: Campaign) -> None:
    seen: list[tuple[int, int]] = []
    found = verify_campaign(
        sqlite_campaign.url, CAMPAIGN, progress=lambda *step: seen.append(step)
    )
    assert seen[-1] == (found.nodes, found.nodes)


# ------------------------------------------------------------------ import


@pytest.mark.muscle3
@pytest.mark.slow
def test_an_imported_campaign_verifies_clean(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from support import stock_runs

    run_dir = stock_runs.copy_run(
        stock_runs.fresh_run(tmp_path_factory), tmp_path / "run"
    )
    url = f"sqlite:///{tmp_path / 'imported.sqlite'}"
    assert invoke(capsys, "import", str(run_dir), "--db", url).status == 0
    assert run_sql(url, "SELECT count(*) FROM submission") == [(0,)]

    status, found = verify_json(capsys, url)

    assert status == 0, found["problems"]
    assert found["checked"]["workflow_snapshots"] == 6
    assert found["checked"]["member_files"] > 0


# ------------------------------------------------------------------ memory


def _load_every_node(url: str) -> list[Any]:
    """What holding a campaign's nodes in memory takes: the comparison."""
    node = schema.SnapshotNodeRow
    with ReadOnlyStore(url) as store:
        return store.read(
            lambda session: [
                (row.id, row.instance, row.num, metadata_from_row(row))
                for row in session.execute(select(node)).scalars()
            ]
        )


@pytest.mark.slow
def test_verify_runs_in_bounded_memory(tmp_path: Path) -> None:
    stream = macro_micro(11, num_micro=8, num_steps=5600, micro_intermediate=False)
    url = f"sqlite:///{tmp_path / 'large.sqlite'}"
    register_run(url, stream, tmp_path / "run", new_run=False)
    nodes = len(stream.registrations)
    assert nodes >= 50_000

    def peak(work: Any) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            result = work()
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    loaded, loading_peak = peak(lambda: _load_every_node(url))
    assert len(loaded) > nodes
    del loaded
    found, verify_peak = peak(lambda: verify_campaign(url, CAMPAIGN))

    assert found.clean, found.problems[:5]
    assert found.nodes > nodes
    assert found.workflow_snapshots >= 5000
    # what grows with the campaign is not held: a fraction of loading the nodes
    assert verify_peak < loading_peak / 10, (verify_peak, loading_peak)
