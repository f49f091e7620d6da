"""Snapshot metadata: one list of fields, MUSCLE3's, stored and read back unchanged.

The fields are defined once, by snapreg's ``SnapshotMetadata``; they must be those
of ``libmuscle.snapshot.SnapshotMetadata``, each stored in a snapshot_node column
of its own and in a submission's JSON, and read back as they were given, NaN and
infinities included.
"""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from libmuscle.snapshot import SnapshotMetadata as Muscle3Metadata

from snapreg.rules.metadata import METADATA_FIELDS, SnapshotMetadata
from snapreg.storage import schema
from snapreg.storage.codecs import (
    NODE_METADATA_COLUMNS,
    metadata_from_json,
    metadata_from_row,
    metadata_to_json,
    node_row_values,
    node_values,
)

EXAMPLES = [
    SnapshotMetadata(
        triggers=["time 1.5 ≥ every 0.5", ""],
        wallclock_time=1e-300,
        timestamp=math.nan,
        next_timestamp=None,
        port_message_counts={"f_init": [0, 2**62, 7], "o_i": []},
        is_final_snapshot=True,
        snapshot_filename="/tmp/snap shot/ünïcode 'x'.pack",
    ),
    SnapshotMetadata(
        triggers=["at_end"],
        wallclock_time=12.5,
        timestamp=math.inf,
        next_timestamp=-math.inf,
        port_message_counts={},
        is_final_snapshot=False,
        snapshot_filename="s.pack",
    ),
    SnapshotMetadata(["t"], 0.0, -2.0, 3.0, {"state_out": [4, 4, 3]}, False, "x"),
]


def _comparable(metadata: SnapshotMetadata) -> dict[str, Any]:
    """The fields with NaN as text, so that NaN equals NaN."""
    return {
        name: "nan" if isinstance(value, float) and math.isnan(value) else value
        for name, value in dataclasses.asdict(metadata).items()
    }


@pytest.mark.muscle3
def test_the_metadata_fields_are_muscle3s_in_its_order() -> None:
    assert (
        tuple(field.name for field in dataclasses.fields(Muscle3Metadata))
        == METADATA_FIELDS
    )
    assert (
        tuple(field.name for field in dataclasses.fields(SnapshotMetadata))
        == METADATA_FIELDS
    )


def test_every_field_has_a_snapshot_node_column_of_its_own() -> None:
    columns = set(schema.SnapshotNodeRow.__table__.columns.keys())
    assert len(set(NODE_METADATA_COLUMNS)) == len(METADATA_FIELDS)
    assert set(NODE_METADATA_COLUMNS) <= columns
    assert set(node_row_values(EXAMPLES[0])) == set(NODE_METADATA_COLUMNS)
    assert tuple(node_row_values(EXAMPLES[1]).values()) == node_values(EXAMPLES[1])


@pytest.mark.parametrize("metadata", EXAMPLES)
def test_a_row_gives_back_the_metadata(metadata: SnapshotMetadata) -> None:
    row = SimpleNamespace(**node_row_values(metadata))
    expected = _comparable(metadata)
    if metadata.next_timestamp is not None and math.isnan(metadata.next_timestamp):
        expected["next_timestamp"] = None  # stored as NULL: unknown
    assert _comparable(metadata_from_row(row)) == expected


@pytest.mark.parametrize("metadata", EXAMPLES)
def test_a_submission_gives_back_the_metadata(metadata: SnapshotMetadata) -> None:
    stored = json.loads(json.dumps(metadata_to_json(metadata), allow_nan=False))
    assert list(stored) == list(METADATA_FIELDS)
    assert _comparable(metadata_from_json(stored)) == _comparable(metadata)
