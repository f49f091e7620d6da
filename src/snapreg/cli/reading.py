"""The reading commands: campaigns, workflows, show, export, history."""

from __future__ import annotations

from pathlib import Path

import click
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
    time_range,
    triggers_by_instance,
    workflow_snapshot_details_json,
    workflow_snapshot_json,
)
from snapreg.errors import NotFoundError
from snapreg.storage.engines import describe_url
from snapreg.tools.reader import DatabaseReader

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
    """The campaign's workflow snapshots, newest last."""
    with DatabaseReader(database_url) as reader:
        name = reader.campaign_name(campaign)
        found = reader.workflow_snapshots(name, run=run_number)
    if as_json:
        print_json([workflow_snapshot_json(snapshot) for snapshot in found])
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
    table.add_column("File", overflow="fold")
    for snapshot in found:
        table.add_row(
            str(snapshot.id),
            str(snapshot.run),
            local_time(snapshot.created_at),
            time_range(snapshot.nodes),
            member_summary(snapshot.nodes),
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
    """One workflow snapshot: members, triggers, times, its file."""
    with DatabaseReader(database_url) as reader:
        snapshot = reader.workflow_snapshot(workflow_snapshot_id, campaign=campaign)
    if as_json:
        print_json(workflow_snapshot_details_json(snapshot))
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
    console.print(
        f"Resume from it: snapreg export {snapshot.id} -o resume.ymmsl, then pass"
        " that file to muscle_manager (or use snapreg export --with-config).",
        highlight=False,
    )


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
@database_option
@campaign_option
@json_option
def export(
    workflow_snapshot_id: int | None,
    latest: bool,
    output: Path | None,
    with_config: bool,
    database_url: str,
    campaign: str | None,
    as_json: bool,
) -> None:
    """Resume yMMSL of a workflow snapshot (ID or --latest).

    By default the resume section alone, like the workflow snapshot's own file:
    pass it to muscle_manager (or snapreg manage) after the model's own files.
    With --with-config, the configuration the run was started with, its resume
    section replaced by this one: muscle_manager runs it on its own.
    """
    if (workflow_snapshot_id is None) == (not latest):
        raise click.UsageError("give either a workflow snapshot ID or --latest")
    with DatabaseReader(database_url) as reader:
        if workflow_snapshot_id is not None:
            snapshot = reader.workflow_snapshot(workflow_snapshot_id, campaign=campaign)
        else:
            name = reader.campaign_name(campaign)
            newest = reader.latest_workflow_snapshot(name)
            if newest is None:
                raise NotFoundError(f"campaign {name!r} has no workflow snapshots yet")
            snapshot = newest
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
