"""What a restart point needs is recorded: each snapshot file's size, each run's policy.

At registration the manager ``stat``s the instance's snapshot file and keeps its
size (NULL when it cannot see the file); a run records which workflow snapshots it
materialises, and is only continued with the same policy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from snapreg import ConfigurationError, SnapshotRegistry
from snapreg.rules.metadata import coerce_metadata
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
