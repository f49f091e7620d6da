"""Workflow snapshot files: yMMSL that ``muscle_manager`` resumes from.

A file holds a ``resume:`` mapping from instance to snapshot file for every member
that is not a restart node, and a description in MUSCLE3's own wording, so that a
user passes it to ``muscle_manager`` exactly as they pass MUSCLE3's. Files are only
ever written for committed rows, through a temporary file and an atomic rename, so a
crash leaves either the whole file or none; a row whose file is missing is written
again when the registry next opens the run.

Names are ``snapshot_YYYYmmdd_HHMMSS.ymmsl``, then ``_1``, ``_2``, ... when taken.
Unlike MUSCLE3, which gives up after 100 names in one second, the suffixes never run
out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ymmsl
from ymmsl import v0_1, v0_2

from snapreg.rules.instances import instance_sort_key
from snapreg.rules.metadata import SnapshotMetadata

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """What a file needs to know of one member node."""

    instance: str
    metadata: SnapshotMetadata
    is_restart: bool


def _sorted(members: Sequence[Member]) -> list[Member]:
    return sorted(members, key=lambda member: instance_sort_key(member.instance))


def resume_mapping(members: Sequence[Member]) -> dict[str, str]:
    """Instance to snapshot file, for every member that is not a restart node."""
    return {
        member.instance: member.metadata.snapshot_filename
        for member in _sorted(members)
        if not member.is_restart
    }


def _number(value: float) -> str:
    return f"{value:<11.6g}"


def describe(model_name: str, members: Sequence[Member], taken: datetime) -> str:
    """The human-readable description MUSCLE3 writes into a workflow snapshot.

    Model name, when it was taken, the triggers with the instances that reported
    them, and a table of instance, simulation time, wallclock time and type.
    """
    ordered = _sorted(members)
    triggers: dict[str, list[str]] = {}
    width = len("Instance ")
    for member in ordered:
        for trigger in member.metadata.triggers:
            triggers.setdefault(trigger, []).append(member.instance)
        width = max(width, len(member.instance))
    lines = [
        f"Workflow snapshot for {model_name}"
        f" taken on {taken.strftime('%Y-%m-%d %H:%M:%S')}.",
        "Snapshot triggers:",
    ]
    lines += [
        f"- {trigger} ({', '.join(triggers[trigger])})" for trigger in sorted(triggers)
    ]
    lines += [
        "",
        f"{'Instance'.ljust(width)} t           Wallclock time  Type",
        "-" * (width + 41),
    ]
    for member in ordered:
        kind = "Final" if member.metadata.is_final_snapshot else "Intermediate"
        lines.append(
            f"{member.instance.ljust(width)} {_number(member.metadata.timestamp)}"
            f" {_number(member.metadata.wallclock_time)}     {kind}"
        )
    return "\n".join(lines) + "\n"


def render(
    resume: dict[str, str], description: str, *, ymmsl_version: str = "v0.2"
) -> str:
    """The yMMSL text of a workflow snapshot file.

    Byte for byte what ``ymmsl.dump`` writes. The common case (instance names,
    absolute paths, snapreg's own description) is formatted directly, because
    ymmsl's pure-Python YAML emitter costs milliseconds per file and a campaign
    can produce thousands of files a second; anything unusual goes through
    ``ymmsl.dump`` itself. A property test checks that both agree.
    """
    if ymmsl_version == "v0.2":
        fast = _render_fast(resume, description)
        if fast is not None:
            return fast
    mapping: dict[Any, Path] = {
        v0_1.Reference(instance): Path(filename)
        for instance, filename in resume.items()
    }
    config: Any
    if ymmsl_version == "v0.1":
        config = v0_1.PartialConfiguration(resume=mapping, description=description)
    else:
        config = v0_2.Configuration(resume=mapping, description=description)
    return str(ymmsl.dump(config))


# YAML 1.1 words that a plain scalar would turn into booleans or null.
_YAML_WORDS = {"yes", "no", "true", "false", "on", "off", "null", "y", "n"}
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[0-9]+\])*")
# Contains a slash (so it cannot read as a number, date or boolean) and only
# characters that need no quoting in a block mapping value.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./\-\[\]]*")
_PRINTABLE_LINE = re.compile(r"(?:[!-~](?:[ -~]*[!-~])?)?")


def _render_fast(resume: dict[str, str], description: str) -> str | None:
    """Format a v0.2 workflow snapshot directly, or None if it needs ymmsl."""
    if not resume or not description.endswith("\n") or description.endswith("\n\n"):
        return None
    lines = description[:-1].split("\n")
    if lines[0] == "" or any(_PRINTABLE_LINE.fullmatch(line) is None for line in lines):
        return None
    for instance, filename in resume.items():
        if (
            len(instance) >= 128
            or _PLAIN_KEY.fullmatch(instance) is None
            or instance.lower() in _YAML_WORDS
            or "/" not in filename
            or _PLAIN_PATH.fullmatch(filename) is None
            # ymmsl writes Path(filename), which drops "//", "/./" and a final "/"
            or "//" in filename
            or "/./" in filename
            or filename.endswith(("/", "/."))
            or filename.startswith("./")
        ):
            return None
    parts = ["ymmsl_version: v0.2\ndescription: |+\n"]
    parts.extend(f"  {line}\n" if line else "\n" for line in lines)
    parts.append("\nresume:\n")
    parts.extend(f"  {instance}: {filename}\n" for instance, filename in resume.items())
    return "".join(parts)
