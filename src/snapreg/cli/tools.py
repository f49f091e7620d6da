"""When a campaign goes wrong: explain, plot, gc, import."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from snapreg.cli.options import (
    campaign_option,
    count,
    database_option,
    json_option,
    run_option,
)
from snapreg.cli.output import (
    counted,
    display_path,
    print_json,
    progress_bar,
    workflow_snapshot_json,
)

if TYPE_CHECKING:
    from snapreg.tools.gc import CleanupPlan
    from snapreg.tools.gc_delete import CleanupResult
    from snapreg.tools.gc_read import SnapshotFileEntry


# ------------------------------------------------------ explain, plot, gc, import
# Each command is a thin shell over its module: snapreg.tools.explain,
# snapreg.tools.plot, snapreg.tools.gc and snapreg.tools.importer.


@click.command()
@database_option
@campaign_option
@run_option
@click.option(
    "--candidates",
    type=count(0),
    default=3,
    show_default=True,
    help="For a peer without a consistent node: how many of its active nodes to"
    " show with their mismatches, newest first (0: all).",
)
@json_option
def explain(
    database_url: str,
    campaign: str | None,
    run_number: int | None,
    candidates: int,
    as_json: bool,
) -> None:
    """Why the newest workflow snapshot is as old as it is.

    For the newest snapshot of every instance in the campaign's newest run (or
    --run N): which peers have no consistent snapshot, and on which conduit, port
    and slot their message counts disagree (sender's count, receiver's count, and
    the rule that failed: strong, weak or restart).
    """
    from snapreg.tools.explain import explain_campaign
    from snapreg.tools.explain_output import explanation_json, explanation_lines

    found = explain_campaign(
        database_url, campaign, run=run_number, candidates=candidates
    )
    if as_json:
        print_json(explanation_json(found))
        return
    for line in explanation_lines(found):
        click.echo(line)


@click.command()
@database_option
@campaign_option
@run_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="PNG, SVG or HTML file (by its suffix); default: CAMPAIGN-runN.png.",
)
@click.option(
    "--time",
    "time_axis",
    type=click.Choice(["wallclock", "simulation"]),
    default="wallclock",
    show_default=True,
    help="Place snapshots by wallclock time or by simulation time.",
)
@click.option("--no-pairs", is_flag=True, help="Leave out the consistent-pair lines.")
@json_option
def plot(
    database_url: str,
    campaign: str | None,
    run_number: int | None,
    output: Path | None,
    time_axis: Literal["wallclock", "simulation"],
    no_pairs: bool,
    as_json: bool,
) -> None:
    """Draw a run's snapshots as a timeline picture.

    One lane per instance, grouped by component; snapshots by time (intermediate
    and final drawn differently, retired ones faded); consistent pairs as thin
    lines; workflow snapshots as cuts across the lanes, the newest in red. Needs
    matplotlib: pip install 'snapreg[plot]'.
    """
    from snapreg.tools.plot import plot_campaign

    summary = plot_campaign(
        database_url,
        campaign,
        output,
        run=run_number,
        time_axis=time_axis,
        pairs=not no_pairs,
    )
    if as_json:
        print_json(
            {
                "path": str(summary.path.resolve()),
                "campaign": summary.campaign,
                "run": summary.run,
                "lanes": summary.lanes,
                "components": summary.components,
                "nodes": summary.nodes,
                "not_placed": summary.not_placed,
                "workflow_snapshots": summary.workflow_snapshots,
            }
        )
        return
    click.echo(
        f"Wrote {summary.path}: run {summary.run} of campaign {summary.campaign},"
        f" {summary.lanes} lanes, {summary.nodes} nodes,"
        f" {summary.workflow_snapshots} workflow snapshots"
        + (
            f" ({summary.not_placed} without {time_axis} time left out)"
            if summary.not_placed
            else ""
        )
    )


@click.command()
@click.option(
    "--keep",
    type=count(1),
    required=True,
    help="Keep the newest N workflow snapshots and every file they need.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only show what would be deleted and how many bytes (the default).",
)
@click.option(
    "--delete", "delete", is_flag=True, help="Delete the files, and record each."
)
@database_option
@campaign_option
@json_option
def gc(
    keep: int,
    dry_run: bool,
    delete: bool,
    database_url: str,
    campaign: str | None,
    as_json: bool,
) -> None:
    """Delete instance snapshot files that no kept workflow snapshot needs.

    Without --delete, only shows what would go. Never touched: the files of the
    newest --keep workflow snapshots, those of the newest run's active snapshots
    (they may still join a workflow snapshot), databases, yMMSL files, and
    anything but the instance snapshot folders of the run directories the
    campaign recorded (a path through a symbolic link that leaves its run
    directory is refused). Each deleted file is recorded in the
    deleted_snapshot_file table.
    """
    from snapreg.tools.gc import plan_cleanup
    from snapreg.tools.gc_delete import delete_files

    if dry_run and delete:
        raise click.UsageError("give either --dry-run or --delete, not both")
    plan = plan_cleanup(database_url, campaign, keep)
    result = delete_files(database_url, plan) if delete else None
    if as_json:
        print_json(_cleanup_json(plan, result))
        return
    _print_cleanup(plan, result)


def _cleanup_json(plan: CleanupPlan, result: CleanupResult | None) -> dict[str, Any]:
    def entry_json(entry: SnapshotFileEntry) -> dict[str, Any]:
        return {
            "path": str(entry.path),
            "bytes": entry.bytes,
            "run": entry.run,
            "instance": entry.instance,
            "num": entry.num,
        }

    return {
        "campaign": plan.campaign,
        "keep": plan.keep,
        "kept_workflow_snapshots": plan.kept_workflow_snapshots,
        "kept_files": plan.kept_files,
        "dry_run": result is None,
        "deletable": [entry_json(entry) for entry in plan.deletable],
        "deletable_bytes": plan.bytes,
        "refused": [
            {
                **entry_json(refused.entry),
                "reason": refused.reason,
                "resolved": str(refused.resolved),
            }
            for refused in plan.refused
        ],
        "missing": [entry_json(entry) for entry in plan.missing],
        "broken_workflow_snapshots": plan.broken_workflow_snapshots,
        "deleted": None
        if result is None
        else [entry_json(entry) for entry in result.deleted],
        "deleted_bytes": None if result is None else result.bytes,
        "failed": None
        if result is None
        else [{**entry_json(entry), "error": error} for entry, error in result.failed],
    }


#: Files listed per category in text; --json lists them all.
_LISTED_FILES = 20


def _print_cleanup(plan: CleanupPlan, result: CleanupResult | None) -> None:
    kept = ", ".join(str(snapshot_id) for snapshot_id in plan.kept_workflow_snapshots)
    click.echo(
        f"Campaign {plan.campaign}: keeping workflow snapshot"
        f"{'' if len(plan.kept_workflow_snapshots) == 1 else 's'} {kept or '(none)'}"
        f" and {counted(plan.kept_files, 'file')} they or the newest run's active"
        " snapshots need."
    )

    def listing(entries: Sequence[Any], describe: Any) -> None:
        for entry in entries[:_LISTED_FILES]:
            click.echo(f"  {describe(entry)}")
        if len(entries) > _LISTED_FILES:
            click.echo(
                f"  ... and {len(entries) - _LISTED_FILES} more (--json lists all)"
            )

    def file_words(entry: SnapshotFileEntry) -> str:
        return (
            f"{entry.path} (run {entry.run}, {entry.instance} #{entry.num},"
            f" {_size(entry.bytes)})"
        )

    if result is None:
        click.echo(
            f"Would delete {counted(len(plan.deletable), 'file')}, {_size(plan.bytes)}:"
            if plan.deletable
            else "Nothing to delete."
        )
        listing(plan.deletable, file_words)
    else:
        click.echo(
            f"Deleted {counted(len(result.deleted), 'file')}, {_size(result.bytes)}."
        )
        if result.failed:
            click.echo(f"Not deleted ({len(result.failed)}):")
            listing(result.failed, lambda item: f"{item[0].path}: {item[1]}")
    if plan.refused:
        click.echo(
            f"Refused ({len(plan.refused)}), not inside the run directories the"
            " campaign recorded:"
        )
        listing(
            plan.refused,
            lambda refused: (
                f"{refused.entry.path} -> {refused.resolved} ({refused.reason})"
            ),
        )
    if plan.missing:
        click.echo(f"Already gone ({len(plan.missing)}):")
        listing(plan.missing, lambda entry: str(entry.path))
    if plan.deletable and plan.broken_workflow_snapshots:
        broken = len(plan.broken_workflow_snapshots)
        click.echo(
            f"{counted(broken, 'older workflow snapshot')} need"
            f"{'s' if broken == 1 else ''} some of these files: without them"
            f" {'it' if broken == 1 else 'they'} can no longer be resumed from."
        )
    if result is None and plan.deletable:
        click.echo("Nothing was deleted; run again with --delete to delete them.")


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@click.command("import")
@click.argument(
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@database_option
@click.option(
    "--campaign",
    metavar="NAME",
    help="Campaign to add the run to; default: the model's name.",
)
@json_option
def import_command(
    run_dir: Path, database_url: str, campaign: str | None, as_json: bool
) -> None:
    """Rebuild a campaign's run from a MUSCLE3 run directory.

    Reads RUN_DIR/configuration.ymmsl and every instance's snapshot files (with
    MUSCLE3's own code: pip install 'snapreg[muscle3]'), registers them as a new
    run of the campaign in the order they were most likely taken, and writes the
    workflow snapshots found to RUN_DIR/snapreg_import. Nothing is rerun; the
    result is compared with the files the manager wrote in RUN_DIR/snapshots.
    """
    from snapreg.tools.importer import import_run_directory

    with progress_bar("{task.description}", quiet=as_json) as bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(
                    f"{phase.capitalize()} snapshots", total=total
                )
            bar.update(tasks[phase], completed=done)

        result = import_run_directory(
            run_dir, database_url, campaign=campaign, progress=advance
        )
    comparison = result.comparison
    if as_json:
        print_json(
            {
                "campaign": result.campaign,
                "run": result.run,
                "snapshots": result.snapshots,
                "resumed_from": result.resumed_from,
                "snapshot_folder": str(result.snapshot_folder),
                "workflow_snapshots": [
                    workflow_snapshot_json(snapshot)
                    for snapshot in result.workflow_snapshots
                ],
                "manager": None
                if comparison is None
                else {
                    "files": comparison.manager_files,
                    "in_both": comparison.in_both,
                    "equal": comparison.equal,
                },
            }
        )
        return
    found = len(result.workflow_snapshots)
    click.echo(
        f"Imported {run_dir} as run {result.run} of campaign {result.campaign!r}:"
        f" {counted(result.snapshots, 'snapshot')},"
        f" {counted(found, 'workflow snapshot')} (files in"
        f" {display_path(result.snapshot_folder)})."
    )
    if result.resumed_from is not None:
        click.echo(f"It resumed from workflow snapshot {result.resumed_from}.")
    if comparison is None:
        click.echo("The manager left no workflow snapshot files to compare with.")
    elif comparison.equal:
        click.echo(
            f"They equal the {comparison.manager_files} the manager wrote in"
            " RUN_DIR/snapshots."
        )
    else:
        click.echo(
            f"{comparison.in_both} of the {comparison.manager_files} the manager"
            f" wrote in RUN_DIR/snapshots are among them: snapshots taken within"
            " milliseconds of each other reach the manager in an order the run"
            " directory does not record (see docs/commands.md)."
        )
