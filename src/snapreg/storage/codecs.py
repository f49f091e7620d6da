"""How snapshot metadata is stored: snapshot_node columns and submission JSON.

The write side's encodings and their inverses, in one place, derived from the one
list of fields, :data:`snapreg.rules.metadata.METADATA_FIELDS`: a field is stored
as it is unless a conversion below says otherwise. SQL has no NaN for a missing
simulation time (NULL stands for it), and JSON has no NaN or infinity (their text
stands for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any

from snapreg.rules.metadata import METADATA_FIELDS, SnapshotMetadata

#: Fields stored in a snapshot_node column of another name; the others keep theirs.
_RENAMED_COLUMNS = {
    "timestamp": "simulation_time",
    "next_timestamp": "next_simulation_time",
    "is_final_snapshot": "is_final",
}

#: The snapshot_node columns that hold the metadata, one per field, in field order.
NODE_METADATA_COLUMNS = tuple(
    _RENAMED_COLUMNS.get(name, name) for name in METADATA_FIELDS
)


def _same(value: Any) -> Any:
    return value


def _null_for_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _nan_for_null(value: float | None) -> float:
    return math.nan if value is None else value


def _copy_counts(counts: dict[str, list[int]]) -> dict[str, list[int]]:
    return {port: list(slots) for port, slots in counts.items()}


def _encode_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return repr(value)  # 'nan', 'inf', '-inf': JSON has no such numbers


def _decode_float(value: float | str | None) -> float | None:
    return float(value) if isinstance(value, str) else value


Conversion = Callable[[Any], Any]

_TO_COLUMN: dict[str, Conversion] = {
    "triggers": list,
    "timestamp": _null_for_nan,
    "next_timestamp": _null_for_nan,
}
_FROM_COLUMN: dict[str, Conversion] = {
    "triggers": list,
    "timestamp": _nan_for_null,
    "port_message_counts": _copy_counts,
}
_TO_JSON: dict[str, Conversion] = {
    "triggers": list,
    "timestamp": _encode_float,
    "next_timestamp": _encode_float,
}
_FROM_JSON: dict[str, Conversion] = {
    "triggers": list,
    "wallclock_time": float,
    "timestamp": lambda value: _nan_for_null(_decode_float(value)),
    "next_timestamp": _decode_float,
    "port_message_counts": _copy_counts,
    "is_final_snapshot": bool,
    "snapshot_filename": str,
}


class _Codec:
    """Converts the values of every field, in field order; a field without a
    conversion is passed on as it is."""

    def __init__(self, conversions: dict[str, Conversion]) -> None:
        unknown = set(conversions) - set(METADATA_FIELDS)
        assert not unknown, f"conversions of fields that do not exist: {unknown}"
        self._conversions = tuple(
            (index, conversions[name])
            for index, name in enumerate(METADATA_FIELDS)
            if name in conversions
        )

    def __call__(self, values: tuple[Any, ...]) -> list[Any]:
        converted = list(values)
        for index, convert in self._conversions:
            converted[index] = convert(converted[index])
        return converted


_fields_of = attrgetter(*METADATA_FIELDS)
_columns_of = attrgetter(*NODE_METADATA_COLUMNS)
_items_of = itemgetter(*METADATA_FIELDS)
_to_columns = _Codec(_TO_COLUMN)
_from_columns = _Codec(_FROM_COLUMN)
_to_json = _Codec(_TO_JSON)
_from_json = _Codec(_FROM_JSON)


def metadata_from_row(row: Any) -> SnapshotMetadata:
    """The metadata of a snapshot_node row (NULL simulation time means NaN)."""
    return SnapshotMetadata(*_from_columns(_columns_of(row)))


def node_row_values(metadata: SnapshotMetadata) -> dict[str, Any]:
    """The snapshot_node columns that hold the metadata."""
    return dict(zip(NODE_METADATA_COLUMNS, node_values(metadata), strict=True))


def node_values(metadata: SnapshotMetadata) -> tuple[Any, ...]:
    """:func:`node_row_values` as a tuple, in the order of NODE_METADATA_COLUMNS."""
    return tuple(_to_columns(_fields_of(metadata)))


def metadata_to_json(metadata: SnapshotMetadata) -> dict[str, Any]:
    """Metadata as JSON that both backends accept (non-finite floats as text).

    The keys are :data:`~snapreg.rules.metadata.METADATA_FIELDS`, MUSCLE3's names.
    """
    return dict(zip(METADATA_FIELDS, _to_json(_fields_of(metadata)), strict=True))


def metadata_from_json(data: dict[str, Any]) -> SnapshotMetadata:
    """Inverse of :func:`metadata_to_json`."""
    return SnapshotMetadata(*_from_json(_items_of(data)))
