"""Restart points you can trust, on the command line: resumable, or why not.

A campaign in a run directory laid out as MUSCLE3 lays it out: four checkpoints,
each a workflow snapshot of macro, micro[0] and micro[1] whose files are real.
The tests then truncate, grow or delete files (or let ``snapreg gc`` delete them)
and check what ``workflows``, ``show``, ``export`` and ``manage --resume-latest``
make of it: a workflow snapshot is resumable while every member's file is there
with the size recorded at registration.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ymmsl

from snapreg import SnapshotRegistry
from snapreg.tools.reader import DatabaseReader
from support import simulation
from support.command_line import Outcome, invoke, without_superuser_warning
from support.models import MACRO_MICRO_YMMSL, macro_micro_checkpoint

CAMPAIGN = "resumable"
INSTANCES = ("macro", "micro[0]", "micro[1]")
CHECKPOINTS = 4


@dataclass(frozen=True)
class Campaign:
    """The campaign, its run directory and every snapshot's file.

    Attributes:
        url: The database.
        run_dir: The run directory (``configuration.ymmsl``, ``snapshots``,
            ``instances/<instance>/snapshots``).
        files: The file of each instance's snapshot at each checkpoint (from 1).
        ids: The workflow snapshot of each checkpoint, oldest first.
    """

    url: str
    run_dir: Path
    files: dict[tuple[str, int], Path]
    ids: list[int]


@pytest.fixture
def campaign(persistent_database_url: str, tmp_path: Path) -> Campaign:
    run_dir = tmp_path / "run"
    (run_dir / "snapshots").mkdir(parents=True)
    (run_dir / "configuration.ymmsl").write_text(MACRO_MICRO_YMMSL)
    files: dict[tuple[str, int], Path] = {}
    ids: list[int] = []
    with SnapshotRegistry(
        ymmsl.load(MACRO_MICRO_YMMSL),
        run_dir / "snapshots",
        database_url=persistent_database_url,
        campaign=CAMPAIGN,
    ) as registry:
        for checkpoint in range(1, CHECKPOINTS + 1):
            for name in INSTANCES:
                stem = name.replace("[", "-").replace("]", "")
                path = run_dir / "instances" / name / "snapshots"
                path.mkdir(parents=True, exist_ok=True)
                path = path / f"{stem}_{checkpoint}.pack"
                path.write_bytes(b"x" * (1000 * checkpoint + len(name)))
                files[name, checkpoint] = path
                ids.extend(
                    found.id
                    for found in registry.add_snapshot(
                        name, macro_micro_checkpoint(name, checkpoint, path)
                    )
                )
    assert len(ids) == CHECKPOINTS
    return Campaign(persistent_database_url, run_dir, files, ids)


def _json(outcome: Outcome) -> Any:
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def _stderr(outcome: Outcome) -> list[str]:
    return without_superuser_warning(outcome.stderr)


def _workflows(capsys: pytest.CaptureFixture[str], campaign: Campaign) -> Any:
    return _json(invoke(capsys, "workflows", "--db", campaign.url, "--json"))


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)


# ------------------------------------------------------------------- workflows


def test_workflows_json_says_which_are_resumable_and_why_not(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    assert [item["resumable"] for item in _workflows(capsys, campaign)] == [True] * 4
    assert all(item["problems"] == [] for item in _workflows(capsys, campaign))

    truncated = campaign.files["macro", 4]
    _truncate(truncated, 10)
    grown = campaign.files["micro[1]", 2]
    grown.write_bytes(grown.read_bytes() + b"more")
    campaign.files["micro[0]", 3].unlink()
    found = _workflows(capsys, campaign)

    assert [item["resumable"] for item in found] == [True, False, False, False]
    assert found[3]["problems"] == [
        {
            "instance": "macro",
            "path": str(truncated),
            "kind": "size",
            "recorded_size": 4005,
            "actual_size": 10,
            "deleted_at": None,
            "deletion_reason": None,
        }
    ]
    [problem] = found[1]["problems"]
    assert (problem["kind"], problem["recorded_size"], problem["actual_size"]) == (
        "size",
        2008,
        2012,
    )
    [problem] = found[2]["problems"]
    assert (problem["instance"], problem["kind"], problem["actual_size"]) == (
        "micro[0]",
        "missing",
        None,
    )
    assert problem["path"] == str(campaign.files["micro[0]", 3])


def test_workflows_table_has_a_resumable_column(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    campaign.files["micro[0]", 3].unlink()
    campaign.files["micro[1]", 3].unlink()
    _truncate(campaign.files["macro", 4], 0)

    outcome = invoke(capsys, "workflows", "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert "Resumable" in outcome.stdout
    rows = {
        int(line.split()[1]): line
        for line in outcome.stdout.splitlines()
        if re.match(r"^│\s+\d+\s+│", line)
    }
    assert sorted(rows) == campaign.ids
    assert "│ yes" in rows[campaign.ids[0]] and "│ yes" in rows[campaign.ids[1]]
    assert "no: 2 missing" in rows[campaign.ids[2]]
    assert "no: 1 wrong size" in rows[campaign.ids[3]]


def test_one_command_stats_each_snapshot_file_once(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # show then looks for the newest resumable one, which starts at the one it
    # shows; export --latest passes three before it finds one
    for checkpoint in range(2, CHECKPOINTS + 1):
        campaign.files["macro", checkpoint].unlink()
    stats: Counter[str] = Counter()
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).endswith(".pack"):
            stats[str(path)] += 1
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    for command in (
        ["workflows"],
        ["show", str(campaign.ids[-1])],
        ["export", "--latest"],
    ):
        stats.clear()
        outcome = invoke(capsys, *command, "--db", campaign.url)
        assert outcome.status == 0, outcome.stderr
        assert stats and max(stats.values()) == 1, (command, stats)


# ------------------------------------------------------------------------ show


def test_show_says_a_workflow_snapshot_is_resumable(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    outcome = invoke(capsys, "show", str(campaign.ids[1]), "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert "Resumable: yes" in outcome.stdout
    assert f"Resume from it: snapreg export {campaign.ids[1]} " in outcome.stdout
    shown = _json(
        invoke(capsys, "show", str(campaign.ids[1]), "--db", campaign.url, "--json")
    )
    assert (shown["resumable"], shown["problems"]) == (True, [])


def test_show_says_why_one_is_not_resumable_and_what_to_do(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    newest = campaign.ids[-1]
    campaign.files["micro[1]", 4].unlink()
    _truncate(campaign.files["macro", 4], 7)

    outcome = invoke(capsys, "show", str(newest), "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "Resumable: no" in lines
    assert (
        f"  - macro: {campaign.files['macro', 4]} is 7 bytes, not the 4005 recorded"
        " when it was registered" in lines
    )
    assert f"  - micro[1]: {campaign.files['micro[1]', 4]} is missing" in lines
    assert "Resume from it" not in outcome.stdout
    assert f"snapreg export {newest} -o" not in outcome.stdout
    assert (
        f"The campaign's newest resumable workflow snapshot is {campaign.ids[2]}:"
        f" snapreg export {campaign.ids[2]} -o resume.ymmsl" in outcome.stdout
    )
    assert f"snapreg export {newest} --force" in outcome.stdout

    shown = _json(invoke(capsys, "show", str(newest), "--db", campaign.url, "--json"))
    assert shown["resumable"] is False
    assert [(p["instance"], p["kind"]) for p in shown["problems"]] == [
        ("macro", "size"),
        ("micro[1]", "missing"),
    ]


def test_show_without_any_resumable_one_offers_only_force(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    for checkpoint in range(1, CHECKPOINTS + 1):
        campaign.files["micro[0]", checkpoint].unlink()

    outcome = invoke(capsys, "show", str(campaign.ids[0]), "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert f"No workflow snapshot of campaign '{CAMPAIGN}' is resumable" in (
        outcome.stdout
    )
    assert f"snapreg export {campaign.ids[0]} --force" in outcome.stdout
    assert "Resume from it" not in outcome.stdout


# ---------------------------------------------------------------------- export


def test_export_refuses_one_that_is_not_resumable_unless_forced(
    capsys: pytest.CaptureFixture[str], campaign: Campaign, tmp_path: Path
) -> None:
    broken = campaign.ids[2]
    gone = campaign.files["micro[0]", 3]
    gone.unlink()
    output = tmp_path / "r.ymmsl"

    refused = invoke(
        capsys, "export", str(broken), "-o", str(output), "--db", campaign.url
    )

    assert refused.status == 1
    assert refused.stdout == ""
    [message] = _stderr(refused)
    assert message.startswith(
        f"snapreg: error: workflow snapshot {broken} is not resumable:"
        f" micro[0]: {gone} is missing"
    )
    assert "--force" in message
    assert f"newest resumable workflow snapshot is {campaign.ids[3]}" in message
    assert not output.exists()

    forced = invoke(
        capsys,
        "export",
        str(broken),
        "--force",
        "-o",
        str(output),
        "--db",
        campaign.url,
    )

    assert forced.status == 0, forced.stderr
    warning, wrote = _stderr(forced)
    assert warning == (
        f"snapreg: warning: workflow snapshot {broken} is not resumable"
        f" (micro[0]: {gone} is missing); exported anyway (--force)"
    )
    assert wrote.startswith(f"Wrote workflow snapshot {broken}")
    resume = ymmsl.load(output.read_text()).resume
    assert {str(k): str(v) for k, v in resume.items()}["micro[0]"] == str(gone)


def test_export_latest_skips_newer_ones_that_are_not_resumable(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    newest, second, third = campaign.ids[3], campaign.ids[2], campaign.ids[1]
    _truncate(campaign.files["macro", 4], 3)
    campaign.files["micro[1]", 3].unlink()

    outcome = invoke(capsys, "export", "--latest", "--db", campaign.url)

    assert outcome.status == 0, outcome.stderr
    assert _stderr(outcome) == [
        f"snapreg: skipped workflow snapshot {newest}: macro:"
        f" {campaign.files['macro', 4]} is 3 bytes, not the 4005 recorded when it"
        " was registered",
        f"snapreg: skipped workflow snapshot {second}: micro[1]:"
        f" {campaign.files['micro[1]', 3]} is missing",
    ]
    assert (
        outcome.stdout
        == invoke(capsys, "export", str(third), "--db", campaign.url).stdout
    )
    result = _json(invoke(capsys, "export", "--latest", "--db", campaign.url, "--json"))
    assert (result["id"], result["resumable"]) == (third, True)
    assert [item["id"] for item in result["skipped"]] == [newest, second]
    assert result["skipped"][1]["problems"][0]["kind"] == "missing"
    # --force takes the newest, resumable or not, and warns
    forced = invoke(capsys, "export", "--latest", "--force", "--db", campaign.url)
    assert forced.status == 0
    assert _stderr(forced)[0].startswith(
        f"snapreg: warning: workflow snapshot {newest} is not resumable"
    )


def test_export_latest_with_none_resumable_says_so(
    capsys: pytest.CaptureFixture[str], campaign: Campaign
) -> None:
    for checkpoint in range(1, CHECKPOINTS + 1):
        campaign.files["macro", checkpoint].unlink()

    outcome = invoke(capsys, "export", "--latest", "--db", campaign.url)

    assert outcome.status == 1
    assert outcome.stdout == ""
    *skipped, message = _stderr(outcome)
    assert [line.split(":")[1] for line in skipped] == [
        f" skipped workflow snapshot {snapshot_id}"
        for snapshot_id in reversed(campaign.ids)
    ]
    assert message == (
        f"snapreg: error: none of the 4 workflow snapshots of campaign {CAMPAIGN!r}"
        " is resumable; snapreg export ID --force exports one anyway"
    )


# --------------------------------------------------------------------------- gc


def test_after_gc_the_workflow_snapshots_it_broke_are_not_resumable(
    capsys: pytest.CaptureFixture[str],
    campaign: Campaign,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    deleted = invoke(capsys, "gc", "--keep", "1", "--delete", "--db", campaign.url)
    assert deleted.status == 0, deleted.stderr
    assert not campaign.files["macro", 1].exists()

    found = _workflows(capsys, campaign)

    assert [item["resumable"] for item in found] == [False, False, False, True]
    for item in found[:3]:
        assert sorted(p["instance"] for p in item["problems"]) == list(INSTANCES)
        for problem in item["problems"]:
            assert problem["kind"] == "deleted"
            assert problem["deletion_reason"].startswith("snapreg gc --keep 1")
            assert problem["deleted_at"] is not None
    older = campaign.ids[1]
    shown = invoke(capsys, "show", str(older), "--db", campaign.url)
    assert shown.status == 0
    assert "Resume from it" not in shown.stdout
    assert f"  - macro: {campaign.files['macro', 2]} was deleted on " in shown.stdout
    assert "(snapreg gc --keep 1:" in shown.stdout
    assert f"is {campaign.ids[3]}: snapreg export {campaign.ids[3]}" in shown.stdout
    assert _error_line(invoke(capsys, "export", str(older), "--db", campaign.url))
    latest = invoke(capsys, "export", "--latest", "--db", campaign.url)
    assert latest.status == 0 and _stderr(latest) == []
    assert str(campaign.files["macro", 4]) in latest.stdout


def _error_line(outcome: Outcome) -> str:
    assert outcome.status == 1, outcome.stdout
    [line] = _stderr(outcome)
    assert line.startswith("snapreg: error: ")
    return line


# ---------------------------------------------------------------------- manage


@pytest.mark.muscle3
def test_manage_resume_latest_refuses_when_none_is_resumable(
    capsys: pytest.CaptureFixture[str], campaign: Campaign, tmp_path: Path
) -> None:
    for checkpoint in range(1, CHECKPOINTS + 1):
        campaign.files["micro[1]", checkpoint].unlink()
    run_dir = tmp_path / "run2"
    run_dir.mkdir()

    outcome = invoke(
        capsys,
        "manage",
        "--db",
        campaign.url,
        "--campaign",
        CAMPAIGN,
        "--resume-latest",
        "--start-all",
        "--run-dir",
        str(run_dir),
        *simulation.MODEL_FILES,
    )

    assert outcome.status == 1
    *skipped, message = _stderr(outcome)
    assert skipped == [
        f"snapreg: skipped workflow snapshot {snapshot_id}: micro[1]:"
        f" {campaign.files['micro[1]', checkpoint]} is missing"
        for snapshot_id, checkpoint in zip(
            reversed(campaign.ids), range(CHECKPOINTS, 0, -1), strict=True
        )
    ]
    assert message == (
        f"snapreg: error: none of the 4 workflow snapshots of campaign {CAMPAIGN!r}"
        " is resumable: resuming would fail when the instances start. Pass"
        " --or-from-scratch to start from scratch instead"
    )
    assert list(run_dir.iterdir()) == []  # the manager never started
    with DatabaseReader(campaign.url) as reader:
        [summary] = reader.campaigns()
    assert [run.number for run in summary.runs] == [1]


def test_or_from_scratch_goes_with_resume_latest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "db.sqlite"
    outcome = invoke(
        capsys,
        "manage",
        "--db",
        f"sqlite:///{database}",
        "--or-from-scratch",
        "--start-all",
        *simulation.MODEL_FILES,
    )

    assert outcome.status == 2
    assert "--or-from-scratch goes with --resume-latest" in outcome.stderr
    assert not database.exists()
