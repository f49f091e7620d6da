"""How snapreg's objects look on a terminal, as tables and as JSON for scripts."""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.tools.campaigns import CampaignSummary
from snapreg.tools.reader import InstanceHistory
from snapreg.tools.restart_points import (
    MemberFileProblem,
    ProblemKind,
    Resumability,
)

if TYPE_CHECKING:
    from rich.progress import Progress


def campaign_table(campaign: CampaignSummary) -> Table:
    table = Table(
        title=f"Campaign {campaign.name}: {counted(len(campaign.runs), 'run')},"
        f" {counted(campaign.workflow_snapshot_count, 'workflow snapshot')}, last"
        " activity"
        f" {local_time(campaign.last_activity)}"
    )
    table.add_column("Run", justify="right")
    table.add_column("Started")
    table.add_column("Resumed from")
    table.add_column("Snapshots", justify="right")
    table.add_column("Workflow snapshots", justify="right")
    table.add_column("Last activity")
    table.add_column("Status")
    missing = any(run.missing_files for run in campaign.runs)
    if missing:  # rare: say it loudly, but only then
        table.add_column("Files missing", justify="right", style="bold red")
    for run in campaign.runs:
        same_day = run.last_activity.astimezone().date() == (
            run.started_at.astimezone().date()
        )
        table.add_row(
            str(run.number),
            local_time(run.started_at),
            "scratch"
            if run.resumed_from is None
            else f"#{run.resumed_from} (run {run.resumed_from_run})",
            str(run.snapshot_count),
            str(run.workflow_snapshot_count),
            run.last_activity.astimezone().strftime("%H:%M:%S")
            if same_day
            else local_time(run.last_activity),
            run.status,
            *([str(run.missing_files)] if missing else []),
        )
    return table


def history_table(campaign: str, instance: str, run: InstanceHistory) -> Table:
    table = Table(title=f"{instance} in run {run.run} of campaign {campaign}")
    table.add_column("#", justify="right")
    table.add_column("Registered")
    table.add_column("t", justify="right")
    table.add_column("Type")
    table.add_column("State")
    table.add_column("Consistent with", overflow="fold")
    for node in run.nodes:
        table.add_row(
            str(node.num),
            "" if node.registered_at is None else local_time(node.registered_at),
            "" if node.is_restart else format_number(node.snapshot.timestamp),
            node_type(node),
            "active" if node.active else "retired",
            "; ".join(
                f"{peer} #{', #'.join(str(num) for num in nums)}"
                for peer, nums in peers_json(node).items()
            )
            or "-",
        )
    return table


def campaign_json(campaign: CampaignSummary) -> dict[str, Any]:
    return {
        "name": campaign.name,
        "created_at": campaign.created_at.isoformat(),
        "last_activity": campaign.last_activity.isoformat(),
        "snapshots": campaign.snapshot_count,
        "workflow_snapshots": campaign.workflow_snapshot_count,
        "runs": [
            {
                "number": run.number,
                "model": run.model_name,
                "started_at": run.started_at.isoformat(),
                "last_activity": run.last_activity.isoformat(),
                "status": run.status,
                "writer": run.writer,
                "resumed_from": None
                if run.resumed_from is None
                else {
                    "workflow_snapshot": run.resumed_from,
                    "run": run.resumed_from_run,
                },
                "snapshots": run.snapshot_count,
                "workflow_snapshots": run.workflow_snapshot_count,
                "missing_files": run.missing_files,
                "snapshot_folder": run.snapshot_folder,
            }
            for run in campaign.runs
        ],
    }


def workflow_snapshot_json(snapshot: WorkflowSnapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "campaign": snapshot.campaign,
        "run": snapshot.run,
        "created_at": snapshot.created_at.isoformat(),
        "path": None if snapshot.path is None else str(snapshot.path),
        "members": {
            str(node.instance): None
            if node.is_restart
            else node.snapshot.snapshot_filename
            for node in snapshot.nodes
        },
    }


def workflow_snapshot_details_json(snapshot: WorkflowSnapshot) -> dict[str, Any]:
    return {
        **workflow_snapshot_json(snapshot),
        "file_exists": snapshot.path is not None and snapshot.path.is_file(),
        "description": snapshot.description,
        "triggers": triggers_by_instance(snapshot.nodes),
        "nodes": [node_json(node) for node in snapshot.nodes],
    }


def resumability_json(state: Resumability) -> dict[str, Any]:
    """``resumable`` and ``problems`` (empty when resumable)."""
    return {
        "resumable": state.resumable,
        "problems": [problem_json(problem) for problem in state.problems],
    }


def problem_json(problem: MemberFileProblem) -> dict[str, Any]:
    deletion = problem.deletion
    return {
        "instance": problem.instance,
        "path": problem.path,
        "kind": problem.kind,
        "recorded_size": problem.recorded_size,
        "actual_size": problem.actual_size,
        "deleted_at": None if deletion is None else deletion.deleted_at.isoformat(),
        "deletion_reason": None if deletion is None else deletion.reason,
    }


#: How the workflows table counts each kind of problem.
_PROBLEM_WORDS: dict[ProblemKind, str] = {
    "missing": "missing",
    "size": "wrong size",
    "deleted": "deleted",
}


def resumability_cell(state: Resumability) -> str:
    """``yes``, or ``no: 2 missing, 1 wrong size`` (files, by kind)."""
    if state.resumable:
        return "yes"
    kinds = Counter(problem.kind for problem in state.problems)
    return "no: " + ", ".join(
        f"{kinds[kind]} {word}" for kind, word in _PROBLEM_WORDS.items() if kinds[kind]
    )


def node_json(node: SnapshotNode) -> dict[str, Any]:
    metadata = node.snapshot
    return {
        "instance": str(node.instance),
        "num": node.num,
        "is_restart": node.is_restart,
        "active": node.active,
        "registered_at": None
        if node.registered_at is None
        else node.registered_at.isoformat(),
        "retired_at": None if node.retired_at is None else node.retired_at.isoformat(),
        "snapshot_filename": None if node.is_restart else metadata.snapshot_filename,
        "triggers": list(metadata.triggers),
        "timestamp": metadata.timestamp,
        "next_timestamp": metadata.next_timestamp,
        "wallclock_time": metadata.wallclock_time,
        "is_final": metadata.is_final_snapshot,
        "port_message_counts": metadata.port_message_counts,
    }


def peers_json(node: SnapshotNode) -> dict[str, list[int]]:
    return {
        str(peer): [linked.num for linked in nodes]
        for peer, nodes in sorted(node.consistent_peers.items())
    }


def triggers_by_instance(nodes: Sequence[SnapshotNode]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in nodes:
        for trigger in node.snapshot.triggers:
            found.setdefault(trigger, []).append(str(node.instance))
    return dict(sorted(found.items()))


def member_summary(nodes: Sequence[SnapshotNode]) -> str:
    restarts = sum(1 for node in nodes if node.is_restart)
    if not restarts:
        return str(len(nodes))
    return f"{len(nodes)} ({restarts} from scratch)"


def time_range(nodes: Sequence[SnapshotNode]) -> str:
    times = [
        node.snapshot.timestamp
        for node in nodes
        if not node.is_restart and node.snapshot.timestamp == node.snapshot.timestamp
    ]
    if not times:
        return "-"
    low, high = min(times), max(times)
    return (
        format_number(low)
        if low == high
        else f"{format_number(low)}..{format_number(high)}"
    )


def node_type(node: SnapshotNode) -> str:
    if node.is_restart:
        return "restart"
    return "final" if node.snapshot.is_final_snapshot else "intermediate"


def counted(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def format_number(value: float) -> str:
    return f"{value:.6g}"


def local_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def display_path(path: Path | None) -> str:
    if path is None:
        return "(no file)"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_json(data: Any) -> None:
    """Print data as JSON, the one way every command does: see :func:`json_text`."""
    click.echo(json_text(data))


def json_text(data: Any) -> str:
    """Data as strict JSON (RFC 8259), indented: NaN and infinities become null.

    Python's own ``json`` writes them as ``NaN`` and ``Infinity``, which strict
    parsers refuse; null is what ``snapreg sql`` writes for a SQL NULL too.
    """
    return json.dumps(_finite(data), indent=2, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


def progress_bar(label: str, *, quiet: bool) -> Progress:
    """A transient progress bar on standard error (label, bar, done of total).

    Shown only on a terminal and never with ``quiet`` (JSON on standard output).
    """
    # imported here: only the long commands draw one
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def make_console() -> Console:
    # Made per call, so that it writes to the sys.stdout of the moment. Output
    # that goes to a file or pipe gets room for full paths instead of 80 columns.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
    return Console(highlight=False, width=width)
