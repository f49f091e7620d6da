"""``snapreg manage``: MUSCLE3's manager on snapreg's registry."""

from __future__ import annotations

import sys

import click

from snapreg.cli.options import (
    count,
    database_option,
)
from snapreg.rules.graph import POLICIES, Policy

# ---------------------------------------------------------------------- manage


@click.command(
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
    help="Resume from the campaign's newest resumable workflow snapshot, naming"
    " the newer ones it skips and why (from scratch if the campaign has none yet;"
    " exit status 1 if it has some but none is resumable).",
)
@click.option(
    "--or-from-scratch",
    is_flag=True,
    help="With --resume-latest: start from scratch when no workflow snapshot of"
    " the campaign is resumable, instead of refusing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --resume-latest: resume even while the campaign's newest run is"
    " still being written (its manager still runs).",
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
@click.option(
    "--keep",
    type=count(1),
    metavar="N",
    help="Delete, as the run goes, the instance snapshot files that none of the"
    " campaign's newest N workflow snapshots needs, by the rules of snapreg gc"
    " --keep N --delete; default: delete nothing.",
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
    or_from_scratch: bool,
    force: bool,
    policy: Policy,
    keep: int | None,
    manager_args: tuple[str, ...],
) -> None:
    """Run muscle_manager with its snapshots kept in the database.

    Each start is a new run of the campaign. Workflow snapshot files are written to
    the run directory as muscle_manager writes them, and recorded in the database.
    With --keep N, instance snapshot files that the newest N workflow snapshots do
    not need are deleted as the run goes, and each deletion recorded.
    """
    if or_from_scratch and not resume_latest:
        raise click.UsageError("--or-from-scratch goes with --resume-latest")
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
            force=force,
            or_from_scratch=or_from_scratch,
            keep=keep,
        )
    except ManagerUsageError as err:  # snapreg manage's usage, not the manager's
        raise click.UsageError(str(err)) from err
    sys.exit(status)
