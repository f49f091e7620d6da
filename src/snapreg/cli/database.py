"""``snapreg db``: the schema (upgrade, current) and the PostgreSQL reader role."""

from __future__ import annotations

import os

import click

from snapreg.cli.options import (
    database_option,
    json_option,
)
from snapreg.cli.output import (
    print_json,
)
from snapreg.storage.engines import describe_url
from snapreg.storage.grants import DEFAULT_STATEMENT_TIMEOUT, MAX_STATEMENT_TIMEOUT
from snapreg.storage.versions import migrate_database
from snapreg.tools.reader import DatabaseReader

#: Where ``db grant-reader --password`` takes the password from, if set.
READER_PASSWORD_VARIABLE = "SNAPREG_READER_PASSWORD"


# -------------------------------------------------------------------------- db


@click.group()
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
        print_json({"location": location, "revision": after, "previous": before})
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
        print_json(
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
        print_json(
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
