"""Crash torture: nothing acknowledged is lost when the registry is killed with -9.

A recorded campaign (2100 registrations of ``macro[2]`` driving ``micro[2][3]`` over
vector ports) is replayed through ``register_snapshot`` in child processes, each
killed with SIGKILL at a random or targeted point (50 kills per backend; 500 with
``SNAPREG_TEST_PROFILE=long``), then checked against an uninterrupted replay and
MUSCLE3's registry. See :mod:`support.torture`; ``python -m support.torture`` (from
``tests/``) runs longer campaigns.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from snapreg import SnapshotRegistry
from support.entries import register_or_raise
from support.streams import Stream, macro_micro
from support.torture import (
    TARGETED_POINTS,
    CampaignSpec,
    Expected,
    expected_results,
    inspection_engine,
    run_and_verify,
    verify,
)

LONG = os.environ.get("SNAPREG_TEST_PROFILE") == "long"
KILLS = 500 if LONG else 50
SPEC = CampaignSpec(num_steps=max(150, math.ceil(KILLS * 40 / 14)))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stream, Expected]:
    """The recorded campaign and what an uninterrupted replay makes of it."""
    stream = SPEC.record()
    return stream, expected_results(stream, tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.slow  # torture: kills a child process 50 times
def test_sigkill_at_random_points_loses_nothing(
    persistent_database_url: str, tmp_path: Path, campaign: tuple[Stream, Expected]
) -> None:
    stream, expected = campaign
    folder = tmp_path / "snapshots"
    folder.mkdir()
    report = run_and_verify(
        persistent_database_url,
        folder,
        stream,
        expected,
        kills=KILLS,
        seed=4,
        workdir=tmp_path,
    )
    print(report.summary())
    assert report.problems == []
    assert report.kills >= KILLS
    assert report.registrations == len(stream.registrations) >= 2000
    # every targeted moment was hit by the child itself at least once
    assert set(TARGETED_POINTS) <= set(report.kills_by_point)
    # the registration in flight was sometimes stored, sometimes not, and the
    # harness re-submitted exactly the ones that were not
    assert report.in_flight_outcomes.get("stored", 0) > 0
    assert report.in_flight_outcomes.get("not stored", 0) > 0
    assert report.submissions == report.registrations + report.in_flight_outcomes.get(
        "not stored", 0
    )


SMALL = macro_micro(3, num_micro=2, num_steps=3)

CORRUPTIONS = {
    "file deleted": ("rows without a file", None),
    "stray file": ("files without a row", None),
    "submission duplicated": (
        "submissions stored for",
        "INSERT INTO submission (run_id, instance, snapshot_metadata, submitted_at)"
        " SELECT run_id, instance, snapshot_metadata, submitted_at FROM submission"
        " WHERE id = (SELECT max(id) FROM submission)",
    ),
    "edge lost": (
        "consistent pairs differ",
        "DELETE FROM consistent_pair WHERE rowid = (SELECT max(rowid)"
        " FROM consistent_pair)",
    ),
    "node revived": (
        "active nodes (MUSCLE3) differ",
        "UPDATE snapshot_node SET retired_at = NULL WHERE id = (SELECT min(id)"
        " FROM snapshot_node WHERE retired_at IS NOT NULL)",
    ),
    "member lost": (
        "without one member per instance",
        "DELETE FROM workflow_snapshot_member WHERE rowid = (SELECT max(rowid)"
        " FROM workflow_snapshot_member)",
    ),
    "lease kept": (
        "still held by pid",
        "UPDATE run SET writer_token = 'x', writer_pid = 1, writer_host = 'h'",
    ),
}


@pytest.fixture(scope="module")
def small_expected(tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """What a small campaign gives without a crash."""
    return expected_results(SMALL, tmp_path_factory.mktemp("small-reference"))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_the_checks_find_what_they_look_for(
    tmp_path: Path, corruption: str, small_expected: Expected
) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    with SnapshotRegistry(
        SMALL.config, folder, database_url=url, campaign="small"
    ) as registry:
        registry.start()
        for instance, metadata in SMALL.registrations:
            register_or_raise(registry, instance, metadata)
    assert verify(url, folder, SMALL, "small", small_expected) == []
    message, statement = CORRUPTIONS[corruption]
    if corruption == "file deleted":
        sorted(folder.glob("snapshot_*.ymmsl"))[0].unlink()
    elif corruption == "stray file":
        (folder / "snapshot_20000101_000000.ymmsl").write_text("resume: {}\n")
    else:
        assert statement is not None
        engine = inspection_engine(url)
        with engine.begin() as connection:
            connection.execute(text(statement))
        engine.dispose()
    problems = verify(url, folder, SMALL, "small", small_expected)
    assert any(message in problem for problem in problems), problems
