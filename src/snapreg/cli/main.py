"""The ``snapreg`` command: run MUSCLE3 on a persistent registry, steer campaigns.

A thin shell: ``manage`` hands over to :mod:`snapreg.muscle3.manage`, the schema
commands to :mod:`snapreg.storage.database`, and every other command reads through
:class:`snapreg.tools.reader.DatabaseReader`, which never creates or changes a database.
Tables are for people; ``--json`` prints the same facts for scripts. Every error
snapreg raises on purpose ends up in :func:`main` and is printed as one line on
standard error with a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from snapreg.cli.options import ROW_ID, RUN_NUMBER, count, database_option
from snapreg.errors import NotFoundError, SnapregError
from snapreg.rules.graph import POLICIES, Policy
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.storage.database import describe_url, migrate_database
from snapreg.storage.grants import DEFAULT_STATEMENT_TIMEOUT, MAX_STATEMENT_TIMEOUT
from snapreg.tools.reader import CampaignSummary, DatabaseReader, InstanceHistory
from snapreg.tools.sql import sql_command

if TYPE_CHECKING:
    from snapreg.tools.gc import CleanupPlan, CleanupResult, SnapshotFileEntry

#: Exit status for every error snapreg reports (click uses 2 for usage errors).
ERROR_STATUS = 1
#: Where ``db grant-reader --password`` takes the password from, if set.
READER_PASSWORD_VARIABLE = "SNAPREG_READER_PASSWORD"


campaign_option = click.option(
    "--campaign",
    metavar="NAME",
    help="The campaign; default: the only one in the database.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)
run_option = click.option("--run", "run_number", type=RUN_NUMBER, help="Only this run.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snapreg", prog_name="snapreg")
def cli() -> None:
    """A persistent snapshot registry for MUSCLE3 campaigns.

    Run a simulation with `snapreg manage` where you would run `muscle_manager`;
    every snapshot, consistent pair and workflow snapshot is kept in a database, so
    that a crashed campaign resumes with `snapreg manage --resume-latest`. The other
    commands only read that database, except `db upgrade` (migrates it),
    `db grant-reader` (makes a reader role), `import` (adds a campaign) and
    `gc --delete` (deletes snapshot files and records it).
    """


# ---------------------------------------------------------------------- manage


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="Every other option and argument is muscle_manager's: the yMMSL files,"
    " --start-all, --run-dir, --log-level, --location-file, -m/--model (see"
    " muscle_manager --help).",
)
@database_option
@click.option(
    "--campaign",
    metavar="NAME",
    help="Campaign to add this run to; default: the model's name.",
)
@click.option(
    "--resume-latest",
    is_flag=True,
    help="Resume from the campaign's newest workflow snapshot (from scratch if it"
    " has none).",
)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="all",
    show_default=True,
    help="Which workflow snapshots to write: every consistent combination that"
    " contains a new snapshot, as muscle_manager does (their number can grow"
    " exponentially), or only the newest one.",
)
@click.argument(
    "manager_args",
    nargs=-1,
    type=click.UNPROCESSED,
    metavar="[MANAGER_OPTIONS] YMMSL_FILES...",
)
def manage(
    database_url: str,
    campaign: str | None,
    resume_latest: bool,
    policy: Policy,
    manager_args: tuple[str, ...],
) -> None:
    """Run muscle_manager with its snapshots kept in the database.

    Each start is a new run of the campaign. Workflow snapshot files are written to
    the run directory as muscle_manager writes them, and recorded in the database.
    """
    # imported here: the other commands work without MUSCLE3 installed
    from snapreg.muscle3.manage import ManagerUsageError
    from snapreg.muscle3.manage import manage as run_manager

    try:
        status = run_manager(
            manager_args,
            database_url=database_url,
            campaign=campaign,
            resume_latest=resume_latest,
            policy=policy,
            announce=lambda line: click.echo(f"snapreg: {line}", err=True),
        )
    except ManagerUsageError as err:  # snapreg manage's usage, not the manager's
        raise click.UsageError(str(err)) from err
    sys.exit(status)


# -------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Create, upgrade and inspect the database schema."""


@db.command()
@database_option
@json_option
def upgrade(database_url: str, as_json: bool) -> None:
    """Create the schema, or migrate it to the newest revision."""
    location = describe_url(database_url)
    before, after = migrate_database(database_url)
    if as_json:
        _print_json({"location": location, "revision": after, "previous": before})
        return
    if before == after:
        click.echo(f"{location} is at schema revision {after}, the newest.")
    elif before is None:
        click.echo(f"Created the schema in {location} (revision {after}).")
    else:
        click.echo(f"Upgraded {location} from revision {before} to {after}.")


@db.command()
@database_option
@json_option
def current(database_url: str, as_json: bool) -> None:
    """Show the schema revision, the newest one, and where the database is."""
    with DatabaseReader(database_url, check_schema=False) as reader:
        status = reader.schema_status()
    if as_json:
        _print_json(
            {
                "location": status.location,
                "revision": status.revision,
                "head": status.head,
                "up_to_date": status.up_to_date,
            }
        )
        return
    verdict = (
        "up to date"
        if status.up_to_date
        else f"run: snapreg db upgrade --db '{status.location}'"
    )
    click.echo(f"revision: {status.revision or '(none)'}")
    click.echo(f"head:     {status.head} ({verdict})")
    click.echo(f"location: {status.location}")


@db.command("grant-reader")
@click.argument("role")
@database_option
@click.option(
    "--login",
    is_flag=True,
    help="Let the role log in (the default makes a group role, granted to users).",
)
@click.option(
    "--password",
    "ask_password",
    is_flag=True,
    help="Give it a password (and LOGIN): from $SNAPREG_READER_PASSWORD, else asked"
    " for.",
)
@click.option(
    "--statement-timeout",
    type=click.IntRange(min=1, max=MAX_STATEMENT_TIMEOUT),
    default=DEFAULT_STATEMENT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Cancel the role's statements after this long.",
)
@json_option
def grant_reader_command(
    role: str,
    database_url: str,
    login: bool,
    ask_password: bool,
    statement_timeout: int,
    as_json: bool,
) -> None:
    """Create or update a PostgreSQL role that can only read snapreg's data.

    ROLE gets SELECT on snapreg's tables and views and nothing else, is
    read-only by default and has a statement timeout. Running it again updates
    the role. Connect snapreg sql and the readers as ROLE instead of a
    superuser: a read-only transaction does not stop a superuser's
    pg_reload_conf(), replication slots or file reads. Needs a connection that
    may create roles and grant on snapreg's tables.
    """
    from snapreg.storage.grants import grant_reader

    password = None
    if ask_password:
        password = os.environ.get(READER_PASSWORD_VARIABLE) or click.prompt(
            f"Password for {role}", hide_input=True, confirmation_prompt=True
        )
    granted = grant_reader(
        database_url,
        role,
        login=login,
        password=password,
        statement_timeout=statement_timeout,
    )
    if as_json:
        _print_json(
            {
                "role": granted.role,
                "created": granted.created,
                "login": granted.login,
                "database": granted.database,
                "schema": granted.schema,
                "relations": list(granted.relations),
                "statement_timeout": granted.statement_timeout,
            }
        )
        return
    click.echo(
        f"{'Created' if granted.created else 'Updated'} role {granted.role}: SELECT"
        f" on {len(granted.relations)} tables and views of {granted.database}"
        f" (schema {granted.schema}), read-only by default, statement timeout"
        f" {granted.statement_timeout} s, {'LOGIN' if granted.login else 'NOLOGIN'}."
    )
    if granted.login:
        click.echo(
            "Connect as it, e.g.: snapreg sql --db"
            f" 'postgresql://{granted.role}@HOST/{granted.database}' \"SELECT ...\""
        )
    else:
        click.echo(f"Grant it to the users who read: GRANT {granted.role} TO alice;")


# ------------------------------------------------------------------- campaigns


@cli.command()
@database_option
@json_option
def campaigns(database_url: str, as_json: bool) -> None:
    """Campaigns with their runs, lineage, counts and last activity."""
    with DatabaseReader(database_url) as reader:
        found = reader.campaigns()
    if as_json:
        _print_json([_campaign_json(campaign) for campaign in found])
        return
    if not found:
        click.echo(f"No campaigns in {describe_url(database_url)} yet.")
        return
    console = _console()
    for campaign in found:
        console.print(_campaign_table(campaign))


# ------------------------------------------------------------------- workflows


@cli.command()
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
        _print_json([_workflow_snapshot_json(snapshot) for snapshot in found])
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
            _local_time(snapshot.created_at),
            _time_range(snapshot.nodes),
            _member_summary(snapshot.nodes),
            _display_path(snapshot.path),
        )
    _console().print(table)


@cli.command()
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
        _print_json(_workflow_snapshot_details_json(snapshot))
        return
    console = _console()
    exists = snapshot.path is not None and snapshot.path.is_file()
    console.print(
        f"[bold]Workflow snapshot {snapshot.id}[/bold] of campaign"
        f" {snapshot.campaign!r}, run {snapshot.run}",
        highlight=False,
    )
    console.print(f"Created: {_local_time(snapshot.created_at)}", highlight=False)
    console.print(
        f"File:    {snapshot.path}{'' if exists else ' (missing)'}",
        highlight=False,
        soft_wrap=True,
    )
    console.print("Triggers:", highlight=False)
    for trigger, instances in _triggers(snapshot.nodes).items():
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
            _number(node.snapshot.timestamp) if not node.is_restart else "",
            _number(node.snapshot.wallclock_time) if not node.is_restart else "",
            _node_type(node),
            "(start from scratch)"
            if node.is_restart
            else _display_path(Path(node.snapshot.snapshot_filename)),
        )
    console.print(table)
    console.print(
        f"Resume from it: snapreg export {snapshot.id} -o resume.ymmsl, then pass"
        " that file to muscle_manager (or use snapreg export --with-config).",
        highlight=False,
    )


@cli.command()
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
        _print_json(
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


@cli.command()
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
        _print_json(
            [
                {**_node_json(node), "run": run.run, "consistent_with": _peers(node)}
                for run in runs
                for node in run.nodes
            ]
        )
        return
    console = _console()
    for run in runs:
        console.print(_history_table(name, instance, run))


# --------------------------------------------------------------------- output


def _campaign_table(campaign: CampaignSummary) -> Table:
    table = Table(
        title=f"Campaign {campaign.name}: {_count(len(campaign.runs), 'run')},"
        f" {_count(campaign.workflow_snapshot_count, 'workflow snapshot')}, last"
        " activity"
        f" {_local_time(campaign.last_activity)}"
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
            _local_time(run.started_at),
            "scratch"
            if run.resumed_from is None
            else f"#{run.resumed_from} (run {run.resumed_from_run})",
            str(run.snapshot_count),
            str(run.workflow_snapshot_count),
            run.last_activity.astimezone().strftime("%H:%M:%S")
            if same_day
            else _local_time(run.last_activity),
            run.status,
            *([str(run.missing_files)] if missing else []),
        )
    return table


def _history_table(campaign: str, instance: str, run: InstanceHistory) -> Table:
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
            "" if node.registered_at is None else _local_time(node.registered_at),
            "" if node.is_restart else _number(node.snapshot.timestamp),
            _node_type(node),
            "active" if node.active else "retired",
            "; ".join(
                f"{peer} #{', #'.join(str(num) for num in nums)}"
                for peer, nums in _peers(node).items()
            )
            or "-",
        )
    return table


def _campaign_json(campaign: CampaignSummary) -> dict[str, Any]:
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


def _workflow_snapshot_json(snapshot: WorkflowSnapshot) -> dict[str, Any]:
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


def _workflow_snapshot_details_json(snapshot: WorkflowSnapshot) -> dict[str, Any]:
    return {
        **_workflow_snapshot_json(snapshot),
        "file_exists": snapshot.path is not None and snapshot.path.is_file(),
        "description": snapshot.description,
        "triggers": _triggers(snapshot.nodes),
        "nodes": [_node_json(node) for node in snapshot.nodes],
    }


def _node_json(node: SnapshotNode) -> dict[str, Any]:
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
        "timestamp": _finite_or_none(metadata.timestamp),
        "next_timestamp": _finite_or_none(metadata.next_timestamp),
        "wallclock_time": metadata.wallclock_time,
        "is_final": metadata.is_final_snapshot,
        "port_message_counts": metadata.port_message_counts,
    }


def _peers(node: SnapshotNode) -> dict[str, list[int]]:
    return {
        str(peer): [linked.num for linked in nodes]
        for peer, nodes in sorted(node.consistent_peers.items())
    }


def _triggers(nodes: Sequence[SnapshotNode]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in nodes:
        for trigger in node.snapshot.triggers:
            found.setdefault(trigger, []).append(str(node.instance))
    return dict(sorted(found.items()))


def _member_summary(nodes: Sequence[SnapshotNode]) -> str:
    restarts = sum(1 for node in nodes if node.is_restart)
    if not restarts:
        return str(len(nodes))
    return f"{len(nodes)} ({restarts} from scratch)"


def _time_range(nodes: Sequence[SnapshotNode]) -> str:
    times = [
        node.snapshot.timestamp
        for node in nodes
        if not node.is_restart and node.snapshot.timestamp == node.snapshot.timestamp
    ]
    if not times:
        return "-"
    low, high = min(times), max(times)
    return _number(low) if low == high else f"{_number(low)}..{_number(high)}"


def _node_type(node: SnapshotNode) -> str:
    if node.is_restart:
        return "restart"
    return "final" if node.snapshot.is_final_snapshot else "intermediate"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _number(value: float) -> str:
    return f"{value:.6g}"


def _finite_or_none(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def _local_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _display_path(path: Path | None) -> str:
    if path is None:
        return "(no file)"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _console() -> Console:
    # Made per call, so that it writes to the sys.stdout of the moment. Output
    # that goes to a file or pipe gets room for full paths instead of 80 columns.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
    return Console(highlight=False, width=width)


# ------------------------------------------------------------------------ sql

cli.add_command(sql_command)


# ------------------------------------------------------ explain, plot, gc, import
# Each command is a thin shell over its module: snapreg.tools.explain,
# snapreg.tools.plot, snapreg.tools.gc and snapreg.tools.importer.


@cli.command()
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
    from snapreg.tools.explain import (
        explain_campaign,
        explanation_json,
        explanation_lines,
    )

    found = explain_campaign(
        database_url, campaign, run=run_number, candidates=candidates
    )
    if as_json:
        _print_json(explanation_json(found))
        return
    for line in explanation_lines(found):
        click.echo(line)


@cli.command()
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
        _print_json(
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


@cli.command()
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
    from snapreg.tools.gc import delete_files, plan_cleanup

    if dry_run and delete:
        raise click.UsageError("give either --dry-run or --delete, not both")
    plan = plan_cleanup(database_url, campaign, keep)
    result = delete_files(database_url, plan) if delete else None
    if as_json:
        _print_json(_cleanup_json(plan, result))
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
        f" and {_count(plan.kept_files, 'file')} they or the newest run's active"
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
            f"Would delete {_count(len(plan.deletable), 'file')}, {_size(plan.bytes)}:"
            if plan.deletable
            else "Nothing to delete."
        )
        listing(plan.deletable, file_words)
    else:
        click.echo(
            f"Deleted {_count(len(result.deleted), 'file')}, {_size(result.bytes)}."
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
            f"{_count(broken, 'older workflow snapshot')} need"
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


@cli.command("import")
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from snapreg.tools.importer import import_run_directory

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=as_json or not console.is_terminal,
    ) as progress_bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress_bar.add_task(
                    f"{phase.capitalize()} snapshots", total=total
                )
            progress_bar.update(tasks[phase], completed=done)

        result = import_run_directory(
            run_dir, database_url, campaign=campaign, progress=advance
        )
    comparison = result.comparison
    if as_json:
        _print_json(
            {
                "campaign": result.campaign,
                "run": result.run,
                "snapshots": result.snapshots,
                "resumed_from": result.resumed_from,
                "snapshot_folder": str(result.snapshot_folder),
                "workflow_snapshots": [
                    _workflow_snapshot_json(snapshot)
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
        f" {_count(result.snapshots, 'snapshot')},"
        f" {_count(found, 'workflow snapshot')} (files in"
        f" {_display_path(result.snapshot_folder)})."
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


# ----------------------------------------------------------------------- main


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn every error snapreg reports on purpose into one line and a status."""
    try:
        yield
    except SnapregError as err:
        _fail(str(err))
    except SQLAlchemyError as err:  # bad URLs and unreachable servers included
        detail = getattr(err, "orig", None) or err
        _fail(f"database error: {detail}")
    except OSError as err:  # e.g. an output file that cannot be written
        _fail(str(err))


def _fail(message: str) -> None:
    click.echo(f"snapreg: error: {' '.join(message.split())}", err=True)
    sys.exit(ERROR_STATUS)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``snapreg`` console script."""
    with _one_line_errors():
        cli.main(args=None if argv is None else list(argv), prog_name="snapreg")
