"""Snapshot metadata: what an instance reports, checked before anything is written.

:class:`SnapshotMetadata` has the fields of ``libmuscle.snapshot.SnapshotMetadata``;
:func:`coerce_metadata` accepts that class, MUSCLE3's own objects, or a mapping with
the same keys, and returns a validated, private copy so that a caller mutating its
object afterwards cannot change what was registered. :func:`check_counts` holds a
snapshot's message counts against the model and the instance's previous snapshot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from snapreg.errors import InvalidMetadataError
from snapreg.rules.topology import Topology, declared_operators

# Counts are stored as JSON and compared in Python; beyond 2**63 PostgreSQL's JSON
# operators and most clients lose precision, and no simulation sends that many.
MAX_MESSAGE_COUNT = 2**63 - 1
MAX_FILENAME_LENGTH = 4096

_CONTROL_CHARACTER = re.compile("[\x00-\x1f]")
# Port names and triggers already found valid: instances report the same few
# again and again, so checking each once keeps validation cheap. Strings only
# (a str subclass could compare equal and be something else), bounded.
_VALID_TEXT: set[str] = set()
_VALID_TEXT_LIMIT = 10_000


@dataclass
class SnapshotMetadata:
    """Metadata of a snapshot, as an instance reports it to the manager.

    Attributes:
        triggers: Why the snapshot was taken.
        wallclock_time: Seconds since muscle_manager started (elapsed wallclock time).
        timestamp: Simulation time of the snapshot; NaN for implicit snapshots.
        next_timestamp: Simulation time of the next step, if known.
        port_message_counts: Messages sent or received per port and slot.
        is_final_snapshot: Whether it was taken at the end of a reuse loop.
        snapshot_filename: Where the instance saved the snapshot.
    """

    triggers: list[str]
    wallclock_time: float
    timestamp: float
    next_timestamp: float | None
    port_message_counts: dict[str, list[int]] = field(default_factory=dict)
    is_final_snapshot: bool = False
    snapshot_filename: str = ""


#: The metadata fields, MUSCLE3's names in its order: the one list of them. Stored
#: columns, submission JSON and validation are all derived from it.
METADATA_FIELDS = tuple(entry.name for entry in fields(SnapshotMetadata))


def restart_metadata() -> SnapshotMetadata:
    """The metadata of a restart node: start this instance from scratch."""
    return SnapshotMetadata(["Instance start"], 0.0, 0.0, None, {}, True, "")


def coerce_metadata(value: Any) -> SnapshotMetadata:
    """Validate snapshot metadata and return a private copy.

    Args:
        value: A :class:`SnapshotMetadata`, ``libmuscle.snapshot.SnapshotMetadata``
            or a mapping with the same fields.

    Raises:
        InvalidMetadataError: naming the first field that is wrong.
    """
    if isinstance(value, Mapping):
        missing = [name for name in METADATA_FIELDS if name not in value]
        extra = sorted(str(key) for key in value if key not in METADATA_FIELDS)
        if missing or extra:
            raise InvalidMetadataError(
                "snapshot metadata fields are wrong:"
                + (f" missing {', '.join(missing)}" if missing else "")
                + (f" unexpected {', '.join(extra)}" if extra else "")
            )

        def get(name: str) -> Any:
            return value[name]

    else:
        missing = [name for name in METADATA_FIELDS if not hasattr(value, name)]
        if missing:
            raise InvalidMetadataError(
                f"snapshot metadata of type {type(value).__name__} lacks "
                + ", ".join(missing)
            )

        def get(name: str) -> Any:
            return getattr(value, name)

    return SnapshotMetadata(
        triggers=_triggers(get("triggers")),
        wallclock_time=_wallclock(get("wallclock_time")),
        timestamp=_float("timestamp", get("timestamp"), allow_nan=True),
        next_timestamp=_optional_float("next_timestamp", get("next_timestamp")),
        port_message_counts=_counts(get("port_message_counts")),
        is_final_snapshot=_bool("is_final_snapshot", get("is_final_snapshot")),
        snapshot_filename=_filename(get("snapshot_filename")),
    )


@dataclass(frozen=True)
class CountRules:
    """Where a count below zero, or one lower than before, is what MUSCLE3 sends.

    libmuscle 0.10 pre-receives the next F_INIT messages before an instance
    decides whether to save a final snapshot, and in a final snapshot reports one
    message fewer than it counted on every F_INIT port (on
    ``muscle_settings_in`` too, when it is connected). A connected F_INIT port
    has always just pre-received, so its count never drops. A port that no
    conduit connects never receives: it counts 0 and reports ``-1`` in every
    final snapshot (0.11 reports 0). An instance that resumes takes its counts
    from the snapshot it resumes from, ``-1`` included, so such a port then
    reports that count, and one less in final snapshots (``-2`` after resuming
    from a final one). Unconnected ports take no part in consistency, so
    accepting these counts changes no result; anywhere else a count below zero,
    or lower than the instance's previous one, is refused.

    Attributes:
        connected: Per component, the ports a conduit of the model uses.
        declared: Per component, the operator of each port the yMMSL declares.
        resumed: The instances the configuration resumes from a snapshot.
    """

    connected: Mapping[str, frozenset[str]]
    declared: Mapping[str, Mapping[str, str]]
    resumed: frozenset[str]

    @staticmethod
    def from_configuration(config: Any, topology: Topology) -> CountRules:
        """The rules for a model: its conduits, declared ports and resume section."""
        connected: dict[str, set[str]] = {name: set() for name in topology.components}
        for conduit in topology.conduits:
            connected[conduit.sender].add(conduit.sending_port)
            connected[conduit.receiver].add(conduit.receiving_port)
        resume = getattr(config, "resume", None) or {}
        return CountRules(
            connected={name: frozenset(ports) for name, ports in connected.items()},
            declared=declared_operators(config),
            resumed=frozenset(str(instance) for instance in resume),
        )

    def never_receives(self, component: str, port: str) -> bool:
        """Whether libmuscle may count the port as an F_INIT port that never received.

        True for a port that no conduit connects and that the yMMSL does not
        declare with another operator; instances may declare ports the yMMSL
        leaves out. MUSCLE3's own ports are counted apart.
        """
        return (
            not port.startswith("muscle_")
            and port not in self.connected.get(component, frozenset())
            and self.declared.get(component, {}).get(port, "F_INIT") == "F_INIT"
        )


def check_counts(
    instance: str,
    previous: Mapping[str, list[int]],
    metadata: SnapshotMetadata,
    rules: CountRules,
) -> None:
    """Refuse counts MUSCLE3 could not have sent after the instance's previous ones.

    Message counts only grow while an instance runs; a lower count means the
    metadata belongs to another run or is corrupt, and registering it would make
    the registry offer restart points that are not. The exceptions are those
    :class:`CountRules` describes.

    Args:
        instance: The instance that sent the metadata.
        previous: The counts of its previous snapshot in this run (empty if none).
        metadata: The new snapshot's metadata, already coerced.
        rules: The model's rules.

    Raises:
        InvalidMetadataError: naming the port and slot.
    """
    component = instance.partition("[")[0]
    final = metadata.is_final_snapshot
    current = metadata.port_message_counts
    for port, counts in current.items():
        if counts and min(counts) < 0:
            _check_below_zero(instance, component, port, counts, final, rules)
    for port, old_counts in previous.items():
        new_counts = current.get(port, [])
        may_drop = final and rules.never_receives(component, port)
        for slot, old in enumerate(old_counts):
            new = new_counts[slot] if slot < len(new_counts) else 0
            if new < old and not (may_drop and new == old - 1):
                raise InvalidMetadataError(
                    f"{instance}: message count on port {port} slot {slot} is {new},"
                    f" lower than {old} in its previous snapshot of this run"
                )


def _check_below_zero(
    instance: str,
    component: str,
    port: str,
    counts: list[int],
    final: bool,
    rules: CountRules,
) -> None:
    slot, count = next((i, c) for i, c in enumerate(counts) if c < 0)
    if not rules.never_receives(component, port):
        raise InvalidMetadataError(
            f"{instance}: message count on port {port} slot {slot} is {count};"
            " only an F_INIT port that no conduit connects may report less than 0"
        )
    if instance in rules.resumed:
        return  # it carries on from the counts of the snapshot it resumed from
    if not final or min(counts) < -1:
        raise InvalidMetadataError(
            f"{instance}: message count on port {port} slot {slot} is {count};"
            " a port that never received reports -1 in a final snapshot only"
        )


def storable_text(value: str) -> bool:
    """Whether both backends can store the text: valid UTF-8, no NUL character.

    PostgreSQL refuses NUL in text and JSON, and neither backend (nor a yMMSL
    file) can hold a lone surrogate that Python strings allow.
    """
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _known_valid(text: Any) -> bool:
    return type(text) is str and text in _VALID_TEXT


def _remember_valid(text: str) -> None:
    if type(text) is str and len(_VALID_TEXT) < _VALID_TEXT_LIMIT:
        _VALID_TEXT.add(text)


def _triggers(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise InvalidMetadataError(f"triggers must be a list of strings, not {value!r}")
    for trigger in value:
        if _known_valid(trigger):
            continue
        if not isinstance(trigger, str):
            raise InvalidMetadataError(
                f"triggers must be a list of strings, not {value!r}"
            )
        if not storable_text(trigger):
            raise InvalidMetadataError(
                f"trigger {trigger!r} contains a NUL character or is not valid Unicode"
            )
        _remember_valid(trigger)
    return list(value)


def _float(name: str, value: Any, *, allow_nan: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMetadataError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError as err:
        raise InvalidMetadataError(f"{name} {value} is too large for a float") from err
    if math.isnan(number) and not allow_nan:
        raise InvalidMetadataError(f"{name} must not be NaN")
    return number


def _optional_float(name: str, value: Any) -> float | None:
    return None if value is None else _float(name, value, allow_nan=True)


def _wallclock(value: Any) -> float:
    number = _float("wallclock_time", value, allow_nan=False)
    if math.isinf(number):
        raise InvalidMetadataError("wallclock_time must be finite")
    return number


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidMetadataError(f"{name} must be True or False, not {value!r}")
    return value


def _counts(value: Any) -> dict[str, list[int]]:
    if not isinstance(value, Mapping):
        raise InvalidMetadataError(
            f"port_message_counts must map port names to lists, not {value!r}"
        )
    counts: dict[str, list[int]] = {}
    for port, slots in value.items():
        if not _known_valid(port):
            if (
                not isinstance(port, str)
                or not port.isidentifier()
                or not storable_text(port)
            ):
                raise InvalidMetadataError(
                    f"port_message_counts: {port!r} is not a port name"
                )
            _remember_valid(port)
        if not isinstance(slots, (list, tuple)):
            raise InvalidMetadataError(
                f"port_message_counts[{port}] must be a list of counts, not {slots!r}"
            )
        copied = [int(count) for count in slots if type(count) is int]
        if (
            len(copied) != len(slots)
            or (copied and min(copied) < -MAX_MESSAGE_COUNT)
            or (copied and max(copied) > MAX_MESSAGE_COUNT)
        ):
            for count in slots:  # find the culprit; int subclasses other than bool
                if (
                    isinstance(count, bool)
                    or not isinstance(count, int)
                    or not -MAX_MESSAGE_COUNT <= count <= MAX_MESSAGE_COUNT
                ):
                    raise InvalidMetadataError(
                        f"port_message_counts[{port}] must hold integers of at most"
                        f" 63 bits, not {count!r}"
                    )
            copied = [int(count) for count in slots]
        counts[port] = copied
    return counts


def _filename(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidMetadataError(f"snapshot_filename must be a string, not {value!r}")
    if not value or not storable_text(value) or len(value) > MAX_FILENAME_LENGTH:
        raise InvalidMetadataError(
            f"snapshot_filename {value[:80]!r} is not a usable file name"
        )
    if _CONTROL_CHARACTER.search(value):
        raise InvalidMetadataError(
            f"snapshot_filename {value[:80]!r} contains control characters"
        )
    return value
