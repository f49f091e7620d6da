"""How snapshot metadata is stored: snapshot_node columns and submission JSON.

The write side's encodings and their inverses, in one place. SQL has no NaN for
a missing simulation time (NULL stands for it), and JSON has no NaN or infinity
(their text stands for them).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from snapreg.rules.metadata import SnapshotMetadata

#: SnapshotMetadata's fields, MUSCLE3's names: the keys of a submission's JSON.
METADATA_FIELDS = tuple(field.name for field in fields(SnapshotMetadata))


def metadata_from_row(row: Any) -> SnapshotMetadata:
    """The metadata of a snapshot_node row (NULL simulation time means NaN)."""
    return SnapshotMetadata(
        triggers=list(row.triggers),
        wallclock_time=row.wallclock_time,
        timestamp=math.nan if row.simulation_time is None else row.simulation_time,
        next_timestamp=row.next_simulation_time,
        port_message_counts={
            port: list(counts) for port, counts in row.port_message_counts.items()
        },
        is_final_snapshot=row.is_final,
        snapshot_filename=row.snapshot_filename,
    )


#: the snapshot_node columns that hold the metadata, in the order of node_values
NODE_METADATA_COLUMNS = (
    "triggers",
    "wallclock_time",
    "simulation_time",
    "next_simulation_time",
    "port_message_counts",
    "is_final",
    "snapshot_filename",
)


def node_row_values(metadata: SnapshotMetadata) -> dict[str, Any]:
    """The snapshot_node columns that hold the metadata."""
    return dict(zip(NODE_METADATA_COLUMNS, node_values(metadata), strict=True))


def node_values(metadata: SnapshotMetadata) -> tuple[Any, ...]:
    """:func:`node_row_values` as a tuple, in the order of NODE_METADATA_COLUMNS."""
    next_time = metadata.next_timestamp
    return (
        list(metadata.triggers),
        metadata.wallclock_time,
        None if math.isnan(metadata.timestamp) else metadata.timestamp,
        None if next_time is None or math.isnan(next_time) else next_time,
        metadata.port_message_counts,
        metadata.is_final_snapshot,
        metadata.snapshot_filename,
    )


def _encode_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return repr(value)  # 'nan', 'inf', '-inf': JSON has no such numbers


def _decode_float(value: float | str | None) -> float | None:
    return float(value) if isinstance(value, str) else value


def metadata_to_json(metadata: SnapshotMetadata) -> dict[str, Any]:
    """Metadata as JSON that both backends accept (non-finite floats as text).

    The keys are :class:`SnapshotMetadata`'s fields, MUSCLE3's names.
    """
    data = {name: getattr(metadata, name) for name in METADATA_FIELDS}
    data["triggers"] = list(metadata.triggers)
    data["timestamp"] = _encode_float(metadata.timestamp)
    data["next_timestamp"] = _encode_float(metadata.next_timestamp)
    return data


def metadata_from_json(data: dict[str, Any]) -> SnapshotMetadata:
    """Inverse of :func:`metadata_to_json`."""
    timestamp = _decode_float(data["timestamp"])
    return SnapshotMetadata(
        triggers=list(data["triggers"]),
        wallclock_time=float(data["wallclock_time"]),
        timestamp=math.nan if timestamp is None else timestamp,
        next_timestamp=_decode_float(data["next_timestamp"]),
        port_message_counts={
            port: list(counts) for port, counts in data["port_message_counts"].items()
        },
        is_final_snapshot=bool(data["is_final_snapshot"]),
        snapshot_filename=str(data["snapshot_filename"]),
    )
