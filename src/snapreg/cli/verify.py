"""``snapreg verify``: check a campaign from its rows alone (exit 1 on problems)."""

from __future__ import annotations

import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import click

from snapreg.cli.options import campaign_option, database_option, json_option
from snapreg.cli.output import counted, print_json, progress_bar

if TYPE_CHECKING:
    from snapreg.tools.verify import Verification

#: Exit status when verify found problems (click gives 2 for usage errors).
PROBLEMS_STATUS = 1
#: Problems, and ranges of workflow snapshot ids, listed in text; --json lists all.
_LISTED_PROBLEMS = 100
_LISTED_RANGES = 20


@click.command()
@database_option
@campaign_option
@json_option
def verify(database_url: str, campaign: str | None, as_json: bool) -> None:
    """Check a campaign's rows, files and database, as fsck checks a disk.

    Replays every run's snapshot nodes in their stored order through the
    registry's rules and compares the consistent pairs, workflow snapshots and
    retirements it gives with the stored ones; checks that every workflow
    snapshot file says what its rows say and every member's snapshot file is
    there with its recorded size; and runs the database's own integrity check.
    Files that snapreg gc deleted and recorded are no problem: the workflow
    snapshots that needed them are listed as no longer resumable. Writes nothing.
    Exit status 0 when clean, 1 when it found problems (or could not check).
    """
    from snapreg.tools.verify import verify_campaign

    with progress_bar("Replaying snapshot nodes", quiet=as_json) as bar:
        task = bar.add_task("nodes", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        found = verify_campaign(database_url, campaign, progress=advance)
    if as_json:
        print_json(_verification_json(found))
    else:
        _print_verification(found)
    if not found.clean:
        sys.exit(PROBLEMS_STATUS)


def _verification_json(found: Verification) -> dict[str, Any]:
    return {
        "campaign": found.campaign,
        "database": found.database,
        "clean": found.clean,
        "checked": {
            "runs": found.runs,
            "nodes": found.nodes,
            "consistent_pairs": found.pairs,
            "workflow_snapshots": found.workflow_snapshots,
            "workflow_snapshot_files": found.workflow_files,
            "member_files": found.member_files,
        },
        "problems": [problem.as_json() for problem in found.problems],
        "no_longer_resumable": [
            {"first": first, "last": last} for first, last in found.no_longer_resumable
        ],
        "notes": list(found.notes),
    }


def _print_verification(found: Verification) -> None:
    click.echo(
        f"Campaign {found.campaign} ({found.database}): checked"
        f" {counted(found.runs, 'run')}, {counted(found.nodes, 'snapshot node')},"
        f" {counted(found.pairs, 'consistent pair')},"
        f" {counted(found.workflow_snapshots, 'workflow snapshot')}"
        f" ({counted(found.workflow_files, 'file')}) and"
        f" {counted(found.member_files, 'member file')}."
    )
    if found.clean:
        click.echo("No problems found.")
    else:
        kinds = Counter(problem.kind for problem in found.problems)
        click.echo(
            f"{counted(len(found.problems), 'problem')}: "
            + ", ".join(f"{kind} {count}" for kind, count in kinds.items())
        )
        for problem in found.problems[:_LISTED_PROBLEMS]:
            click.echo(f"  {problem.kind}: {problem.message}")
        if len(found.problems) > _LISTED_PROBLEMS:
            click.echo(
                f"  ... and {len(found.problems) - _LISTED_PROBLEMS} more (--json"
                " lists all)"
            )
    if found.no_longer_resumable:
        count = found.not_resumable_count
        ids = ", ".join(
            str(first) if first == last else f"{first}-{last}"
            for first, last in found.no_longer_resumable[:_LISTED_RANGES]
        )
        if len(found.no_longer_resumable) > _LISTED_RANGES:
            ids += " ... (--json lists all)"
        click.echo(
            f"Not a problem: {counted(count, 'workflow snapshot')} need"
            f"{'s' if count == 1 else ''} files that snapreg gc deleted and recorded,"
            f" so {'it' if count == 1 else 'they'} can no longer be resumed from:"
            f" {ids}."
        )
    for note in found.notes:
        click.echo(f"Note: {note}.")
