"""The reading commands: campaigns, workflows, show, export, history."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from snapreg.cli.options import (
    ROW_ID,
    campaign_option,
    database_option,
    json_option,
    run_option,
)
from snapreg.cli.output import (
    campaign_json,
    campaign_table,
    display_path,
    format_number,
    history_table,
    local_time,
    make_console,
    member_summary,
    node_json,
    node_type,
    peers_json,
    print_json,
    resumability_cell,
    resumability_json,
    time_range,
    triggers_by_instance,
    workflow_snapshot_details_json,
    workflow_snapshot_json,
)
from snapreg.errors import NotFoundError, NotResumableError
from snapreg.rules.snapshot import WorkflowSnapshot
from snapreg.storage.engines import describe_url
from snapreg.tools.reader import DatabaseReader
from snapreg.tools.restart_points import Fallback, FileChecker, Resumability

# ------------------------------------------------------------------- campaigns


@click.command()
@database_option
@json_option
def campaigns(database_url: str, as_json: bool) -> None:
    """Campaigns with their runs, lineage, counts and last activity."""
    with DatabaseReader(database_url) as reader:
        found = reader.campaigns()
    if as_json:
        print_json([campaign_json(campaign) for campaign in found])
        return
    if not found:
        click.echo(f"No campaigns in {describe_url(database_url)} yet.")
        return
    console = make_console()
    for campaign in found:
        console.print(campaign_table(campaign))


# ------------------------------------------------------------------- workflows


@click.command()
@database_option
@campaign_option
@run_option
@json_option
def workflows(
    database_url: str, campaign: str | None, run_number: int | None, as_json: bool
) -> None:
    """The campaign's workflow snapshots, newest last, and whether each is resumable.

    A workflow snapshot is resumable when every member's snapshot file is there
    with the size recorded when it was registered.
    """
    with DatabaseReader(database_url) as reader:
        name = reader.campaign_name(campaign)
        found = reader.workflow_snapshots(name, run=run_number)
        states = reader.resumability(
            name, [snapshot.id for snapshot in found], FileChecker()
        )
    if as_json:
        print_json(
            [
                {
                    **workflow_snapshot_json(snapshot),
                    **resumability_json(states[snapshot.id]),
                }
                for snapshot in found
            ]
        )
        return
    if not found:
        click.echo(f"Campaign {name!r} has no workflow snapshots yet.")
        return
    table = Table(title=f"Workflow snapshots of campaign {name}")
    table.add_column("ID", justify="right")
    table.add_column("Run", justify="right")
    table.add_column("Created")
    table.add_column("t", justify="right")
    table.add_column("Members")
    table.add_column("Resumable")
    table.add_column("File", overflow="fold")
    for snapshot in found:
        table.add_row(
            str(snapshot.id),
            str(snapshot.run),
            local_time(snapshot.created_at),
            time_range(snapshot.nodes),
            member_summary(snapshot.nodes),
            resumability_cell(states[snapshot.id]),
            display_path(snapshot.path),
        )
    make_console().print(table)


@click.command()
@click.argument("workflow_snapshot_id", metavar="ID", type=ROW_ID)
@database_option
@campaign_option
@json_option
def show(
    workflow_snapshot_id: int,
    database_url: str,
    campaign: str | None,
    as_json: bool,
) -> None:
    """One workflow snapshot: members, triggers, times, its file, resumable or not.

    When it is not resumable, each member file that is missing, deleted or not its
    recorded size is named, with the campaign's newest resumable one instead.
    """
    checker = FileChecker()
    with DatabaseReader(database_url) as reader:
        snapshot = reader.workflow_snapshot(workflow_snapshot_id, campaign=campaign)
        state = _resumability(reader, snapshot, checker)
        newest = (
            reader.newest_resumable(snapshot.campaign, checker)[0]
            if not state.resumable and not as_json
            else None
        )
    if as_json:
        print_json(
            {**workflow_snapshot_details_json(snapshot), **resumability_json(state)}
        )
        return
    console = make_console()
    exists = snapshot.path is not None and snapshot.path.is_file()
    console.print(
        f"[bold]Workflow snapshot {snapshot.id}[/bold] of campaign"
        f" {snapshot.campaign!r}, run {snapshot.run}",
        highlight=False,
    )
    console.print(f"Created: {local_time(snapshot.created_at)}", highlight=False)
    console.print(
        f"File:    {snapshot.path}{'' if exists else ' (missing)'}",
        highlight=False,
        soft_wrap=True,
    )
    console.print("Triggers:", highlight=False)
    for trigger, instances in triggers_by_instance(snapshot.nodes).items():
        console.print(f"  - {trigger} ({', '.join(instances)})", highlight=False)
    table = Table()
    table.add_column("Instance")
    table.add_column("#", justify="right")
    table.add_column("t", justify="right")
    table.add_column("Wallclock (s)", justify="right")
    table.add_column("Type")
    table.add_column("Snapshot file", overflow="fold")
    for node in snapshot.nodes:
        table.add_row(
            str(node.instance),
            str(node.num),
            format_number(node.snapshot.timestamp) if not node.is_restart else "",
            format_number(node.snapshot.wallclock_time) if not node.is_restart else "",
            node_type(node),
            "(start from scratch)"
            if node.is_restart
            else display_path(Path(node.snapshot.snapshot_filename)),
        )
    console.print(table)
    _print_resumability(console, snapshot, state, newest)


def _print_resumability(
    console: Console,
    snapshot: WorkflowSnapshot,
    state: Resumability,
    newest: WorkflowSnapshot | None,
) -> None:
    """Whether to resume from it, and how; or why not and what to do instead."""

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    if state.resumable:
        say("Resumable: yes (every member's snapshot file is there, as registered)")
        say(
            f"Resume from it: snapreg export {snapshot.id} -o resume.ymmsl, then pass"
            " that file to muscle_manager (or use snapreg export --with-config)."
        )
        return
    say("Resumable: no")
    for problem in state.problems:
        say(f"  - {problem.describe()}")
    if newest is None:
        say(f"No workflow snapshot of campaign {snapshot.campaign!r} is resumable.")
    else:
        say(
            f"The campaign's newest resumable workflow snapshot is {newest.id}:"
            f" snapreg export {newest.id} -o resume.ymmsl (or snapreg export"
            " --latest)."
        )
    say(
        "To export this one anyway (MUSCLE3 will fail when the instances start):"
        f" snapreg export {snapshot.id} --force -o resume.ymmsl"
    )


def _resumability(
    reader: DatabaseReader, snapshot: WorkflowSnapshot, checker: FileChecker
) -> Resumability:
    return reader.resumability(snapshot.campaign, [snapshot.id], checker)[snapshot.id]


@click.command()
@click.argument("workflow_snapshot_id", metavar="[ID]", type=ROW_ID, required=False)
@click.option("--latest", is_flag=True, help="The campaign's newest one.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.option(
    "--with-config",
    is_flag=True,
    help="A complete configuration (the run's own, with this resume section) that"
    " muscle_manager runs as is.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Export even a workflow snapshot that is not resumable, with a warning;"
    " with --latest: the newest one, resumable or not.",
)
@database_option
@campaign_option
@json_option
def export(
    workflow_snapshot_id: int | None,
    latest: bool,
    output: Path | None,
    with_config: bool,
    force: bool,
    database_url: str,
    campaign: str | None,
    as_json: bool,
) -> None:
    """Resume yMMSL of a workflow snapshot (ID or --latest).

    By default the resume section alone, like the workflow snapshot's own file:
    pass it to muscle_manager (or snapreg manage) after the model's own files.
    With --with-config, the configuration the run was started with, its resume
    section replaced by this one: muscle_manager runs it on its own.

    Only a resumable workflow snapshot is exported (every member's snapshot file
    there with its recorded size) unless --force. --latest takes the newest
    resumable one and says on standard error which newer ones it skipped and why.
    """
    if (workflow_snapshot_id is None) == (not latest):
        raise click.UsageError("give either a workflow snapshot ID or --latest")
    checker = FileChecker()
    skipped: tuple[Resumability, ...] = ()
    with DatabaseReader(database_url) as reader:
        if workflow_snapshot_id is not None:
            snapshot = reader.workflow_snapshot(workflow_snapshot_id, campaign=campaign)
        elif force:
            name = reader.campaign_name(campaign)
            newest = reader.latest_workflow_snapshot(name)
            if newest is None:
                raise NotFoundError(f"campaign {name!r} has no workflow snapshots yet")
            snapshot = newest
        else:
            chosen, fallback = reader.newest_resumable(
                reader.campaign_name(campaign), checker
            )
            snapshot = _fall_back(chosen, fallback)
            skipped = fallback.skipped
        state = _resumability(reader, snapshot, checker)
        if not state.resumable:
            if not force:
                newest, _ = reader.newest_resumable(snapshot.campaign, checker)
                raise NotResumableError(
                    f"workflow snapshot {snapshot.id} is not resumable:"
                    f" {state.summary()}. "
                    + (
                        f"No workflow snapshot of campaign {snapshot.campaign!r} is"
                        " resumable"
                        if newest is None
                        else "The campaign's newest resumable workflow snapshot is"
                        f" {newest.id} (snapreg export {newest.id})"
                    )
                    + "; pass --force to export this one anyway"
                )
            click.echo(
                f"snapreg: warning: workflow snapshot {snapshot.id} is not resumable"
                f" ({state.summary()}); exported anyway (--force)",
                err=True,
            )
        text = reader.resume_text(snapshot, with_config=with_config)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    if as_json:
        print_json(
            {
                "id": snapshot.id,
                "campaign": snapshot.campaign,
                "run": snapshot.run,
                "with_config": with_config,
                "output": None if output is None else str(output.resolve()),
                **resumability_json(state),
                "skipped": [
                    {"id": item.workflow_snapshot_id, **resumability_json(item)}
                    for item in skipped
                ],
                "ymmsl": text,
            }
        )
    elif output is None:
        click.echo(text, nl=False)
    else:
        click.echo(
            f"Wrote workflow snapshot {snapshot.id}"
            f"{' with its configuration' if with_config else ''} to {output}",
            err=True,
        )


def _fall_back(chosen: WorkflowSnapshot | None, fallback: Fallback) -> WorkflowSnapshot:
    """Say which newer workflow snapshots were skipped; refuse when none is left."""
    for line in fallback.skipped_lines():
        click.echo(f"snapreg: {line}", err=True)
    if chosen is not None:
        return chosen
    if not fallback.skipped:
        raise NotFoundError(
            f"campaign {fallback.campaign!r} has no workflow snapshots yet"
        )
    raise NotResumableError(
        f"{fallback.nothing_resumable()}; snapreg export ID --force exports one anyway"
    )


@click.command()
@click.argument("instance")
@database_option
@campaign_option
@run_option
@json_option
def history(
    instance: str,
    database_url: str,
    campaign: str | None,
    run_number: int | None,
    as_json: bool,
) -> None:
    """An instance's snapshot nodes and their consistent peers.

    Every node of every run (or of --run N), retired ones too: its number,
    registration time, simulation time, type, whether it is still active, and
    the nodes of each peer instance it was consistent with.
    """
    with DatabaseReader(database_url) as reader:
        name = reader.campaign_name(campaign)
        runs = reader.instance_history(name, instance, run=run_number)
    if as_json:
        print_json(
            [
                {**node_json(node), "run": run.run, "consistent_with": peers_json(node)}
                for run in runs
                for node in run.nodes
            ]
        )
        return
    console = make_console()
    for run in runs:
        console.print(history_table(name, instance, run))
