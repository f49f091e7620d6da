"""Restart points you can trust: what they need is recorded, and checked.

At registration the manager ``stat``s the instance's snapshot file and keeps its
size (NULL when it cannot see the file); a run records which workflow snapshots it
materialises, and is only continued with the same policy. A workflow snapshot is
resumable while every member's file is there with its recorded size; a truncated,
lost or gc-deleted file is named.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from snapreg import ConfigurationError, SnapshotRegistry, WorkflowSnapshot
from snapreg.rules.metadata import coerce_metadata
from snapreg.storage.schema import CampaignRow, WorkflowSnapshotRow
from snapreg.tools.restart_points import (
    SKIPPED_SHOWN,
    Fallback,
    FileChecker,
    MemberFileProblem,
    Resumability,
    newest_resumable,
    resumability,
)
from support.streams import macro_micro

STREAM = macro_micro(5, num_micro=2, num_steps=3)


def test_each_node_records_its_snapshot_file_s_size(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    instance, fields = STREAM.registrations[0]
    seen = tmp_path / "seen.pack"
    seen.write_bytes(b"x" * 1234)
    visible = dataclasses.replace(coerce_metadata(fields), snapshot_filename=str(seen))
    invisible = dataclasses.replace(
        coerce_metadata(STREAM.registrations[1][1]),
        snapshot_filename=str(tmp_path / "elsewhere" / "unseen.pack"),
    )
    with SnapshotRegistry(STREAM.config, None, database_url=url) as registry:
        registry.add_snapshot(instance, visible)
        registry.add_snapshot(STREAM.registrations[1][0], invisible)
    engine = create_engine(url)
    with engine.connect() as connection:
        sizes = dict(
            connection.execute(
                text(
                    "SELECT snapshot_filename, snapshot_file_size FROM snapshot_node"
                    " WHERE NOT is_restart"
                )
            ).all()
        )
    engine.dispose()
    assert sizes == {str(seen): 1234, str(tmp_path / "elsewhere" / "unseen.pack"): None}


def test_a_run_records_its_policy_and_is_continued_only_with_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with SnapshotRegistry(
        STREAM.config, None, database_url=url, policy="latest"
    ) as registry:
        registry.add_snapshot(*STREAM.registrations[0])
    with pytest.raises(ConfigurationError, match="materialises latest"):
        SnapshotRegistry(STREAM.config, None, database_url=url)
    with SnapshotRegistry(
        STREAM.config, None, database_url=url, policy="latest"
    ) as registry:
        assert registry.run_number == 1
    with SnapshotRegistry(
        STREAM.config, None, database_url=url, new_run=True
    ) as registry:
        assert registry.run_number == 2
    engine = create_engine(url)
    with engine.connect() as connection:
        policies = connection.execute(
            text("SELECT number, policy FROM run ORDER BY number")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in policies] == [(1, "latest"), (2, "all")]


# ------------------------------------------------------------ resumability


def register_with_files(
    tmp_path: Path,
) -> tuple[str, list[WorkflowSnapshot], list[Path]]:
    """Register STREAM in a new campaign database, each snapshot's file written
    first; return the database's URL, its workflow snapshots and the files."""
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    folder = tmp_path / "snapshots"
    files = tmp_path / "files"
    folder.mkdir()
    files.mkdir()
    written: list[Path] = []
    registry = SnapshotRegistry(STREAM.config, folder, database_url=url)
    for index, (instance, fields) in enumerate(STREAM.registrations):
        path = files / f"{index:03d}.pack"
        path.write_bytes(b"s" * (100 + index))
        written.append(path)
        metadata = dataclasses.replace(
            coerce_metadata(fields), snapshot_filename=str(path)
        )
        registry.add_snapshot(instance, metadata)
    snapshots = registry.workflow_snapshots()
    registry.close()
    return url, snapshots, written


def check_all(url: str) -> dict[int, Resumability]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            campaign_id = session.scalars(select(CampaignRow.id)).one()
            ids = session.scalars(
                select(WorkflowSnapshotRow.id).order_by(WorkflowSnapshotRow.id)
            ).all()
            return resumability(session, campaign_id, ids)
    finally:
        engine.dispose()


def test_a_workflow_snapshot_is_resumable_while_its_members_files_are_intact(
    tmp_path: Path,
) -> None:
    url, snapshots, written = register_with_files(tmp_path)
    assert len(snapshots) >= 3
    assert all(item.resumable for item in check_all(url).values())

    def members(index: int) -> list[str]:
        return sorted(
            str(node.snapshot.snapshot_filename)
            for node in snapshots[index].nodes
            if not node.is_restart
        )

    newest = snapshots[-1]
    # an older one that needs a file the newest does not, and vice versa
    middle_index = next(
        index
        for index in range(len(snapshots) - 2, -1, -1)
        if set(members(index)) - set(members(-1))
        and set(members(-1)) - set(members(index))
    )
    middle = snapshots[middle_index]
    truncated = Path(next(p for p in members(-1) if p not in members(middle_index)))
    truncated.write_bytes(truncated.read_bytes()[:10])
    gone = next(p for p in members(middle_index) if p not in members(-1))
    Path(gone).unlink()
    found = check_all(url)
    assert not found[newest.id].resumable
    (problem,) = found[newest.id].problems
    assert (problem.kind, problem.path, problem.actual_size) == (
        "size",
        str(truncated),
        10,
    )
    assert "is 10 bytes, not the" in found[newest.id].describe()
    assert [p.kind for p in found[middle.id].problems] == ["missing"]
    assert f"{gone} is missing" in found[middle.id].describe()
    untouched = [
        item.id
        for item in snapshots
        if str(truncated) not in members(snapshots.index(item))
        and gone not in members(snapshots.index(item))
    ]
    assert untouched and all(found[i].resumable for i in untouched)
    # a deletion that gc recorded is named as such
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO deleted_snapshot_file (campaign_id, path, bytes,"
                " deleted_at, reason) SELECT id, :path, 1, :now, 'gc --keep 1'"
                " FROM campaign"
            ),
            {"path": gone, "now": datetime(2026, 12, 1, tzinfo=timezone.utc)},
        )
    engine.dispose()
    (problem,) = check_all(url)[middle.id].problems
    assert problem.kind == "deleted"
    assert "was deleted on 2026-12-01 00:00:00 UTC (gc --keep 1)" in problem.describe()


# ------------------------------------------------------------------ fallback


def test_newest_resumable_falls_back_past_every_broken_one_in_batches(
    tmp_path: Path,
) -> None:
    url, snapshots, written = register_with_files(tmp_path)
    oldest = {
        node.snapshot.snapshot_filename
        for node in snapshots[0].nodes
        if not node.is_restart
    }
    for path in written:
        if str(path) not in oldest:
            path.unlink()
    found = check_all(url)
    resumable = [item.id for item in snapshots if found[item.id].resumable]
    assert resumable and len(resumable) < len(snapshots) - 1
    expected_skipped = [
        item.id for item in reversed(snapshots) if item.id > resumable[-1]
    ]

    engine = create_engine(url)
    try:
        with Session(engine) as session:
            campaign_id = session.scalars(select(CampaignRow.id)).one()
            for batch in (1, 2, 100):
                fallback = newest_resumable(
                    session, campaign_id, "c", FileChecker(), batch=batch
                )
                assert fallback.chosen == resumable[-1], batch
                assert [
                    item.workflow_snapshot_id for item in fallback.skipped
                ] == expected_skipped
            assert all(not item.resumable for item in fallback.skipped)
            # every file broken: nothing to fall back to
            for path in written:
                path.unlink(missing_ok=True)
            nothing = newest_resumable(session, campaign_id, "c", batch=2)
    finally:
        engine.dispose()
    assert nothing.chosen is None
    assert len(nothing.skipped) == len(snapshots)
    assert nothing.nothing_resumable() == (
        f"none of the {len(snapshots)} workflow snapshots of campaign 'c' is resumable"
    )


def test_skipped_lines_name_each_skipped_one_then_count_the_rest() -> None:
    def broken(snapshot_id: int) -> Resumability:
        return Resumability(
            snapshot_id,
            (
                MemberFileProblem("micro[2]", f"/x/{snapshot_id}.pack", "missing", 5),
                MemberFileProblem("macro", "/x/m.pack", "size", 5, 4),
            ),
        )

    fallback = Fallback("c", 1, tuple(broken(i) for i in range(30, 5, -1)))
    lines = fallback.skipped_lines(shown=3)

    assert lines == [
        "skipped workflow snapshot 30: micro[2]: /x/30.pack is missing; macro:"
        " /x/m.pack is 4 bytes, not the 5 recorded when it was registered",
        *[
            f"skipped workflow snapshot {i}: micro[2]: /x/{i}.pack is missing; macro:"
            " /x/m.pack is 4 bytes, not the 5 recorded when it was registered"
            for i in (29, 28)
        ],
        "skipped 22 more workflow snapshots, 27 down to 6, not resumable either"
        " (snapreg workflows says why)",
    ]
    assert len(fallback.skipped_lines()) == SKIPPED_SHOWN + 1
    many = Resumability(
        7,
        tuple(
            MemberFileProblem(f"micro[{i}]", f"/x/{i}.pack", "missing", 5)
            for i in range(5)
        ),
    )
    assert many.summary() == (
        "micro[0]: /x/0.pack is missing; micro[1]: /x/1.pack is missing;"
        " micro[2]: /x/2.pack is missing; and 2 more member files"
    )
    assert many.describe().count("\n") == 4  # show names every one
    assert Fallback("c", None, (broken(3),)).nothing_resumable() == (
        "the only workflow snapshot of campaign 'c' is not resumable"
    )
