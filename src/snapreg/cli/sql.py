"""``snapreg sql``: one statement on a read-only connection, its answer printed.

The statement runs through :mod:`snapreg.tools.sql` (read-only by the database
itself); this module reads the options, warns a PostgreSQL superuser, and prints
the answer as a table for people or CSV or JSON for programs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from snapreg.cli.options import database_option
from snapreg.cli.output import print_json
from snapreg.errors import SnapregError
from snapreg.tools.sql import (
    QueryResult,
    ReadOnlyDatabase,
    format_cell,
    format_csv,
    json_rows,
)

OUTPUT_FORMATS = ("table", "csv", "json")


def print_table(result: QueryResult, console: Console) -> None:
    """The result as a table for people; NULL shown dimmed."""
    if not result.columns:
        console.print("The statement ran; it returns no rows.")
        return
    table = Table(caption=f"{len(result.rows)} row{'s' * (len(result.rows) != 1)}")
    for column in result.columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(
            *(
                Text("NULL", style="dim") if value is None else Text(format_cell(value))
                for value in row
            )
        )
    console.print(table)


def _parse_parameters(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs; values that read as numbers become numbers."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE", param_hint="'--param'"
            )
        parameters[name.strip()] = _number_or_text(value)
    return parameters


def _number_or_text(value: str) -> int | float | str:
    try:
        number = int(value)
    except ValueError:
        pass
    else:
        if not -(2**63) <= number < 2**63:
            raise click.BadParameter(
                f"{value} is beyond a 64-bit integer, the largest a database"
                " column holds",
                param_hint="'--param'",
            )
        return number
    try:
        return float(value)
    except ValueError:
        return value


def _console() -> Console:
    # Output that goes to a file or pipe gets 120 columns instead of rich's 80.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
    return Console(highlight=False, width=width)


_PRINTERS: dict[str, Callable[[QueryResult], None]] = {
    "table": lambda result: print_table(result, _console()),
    "csv": lambda result: click.echo(format_csv(result), nl=False),
    "json": lambda result: print_json(json_rows(result)),
}


@click.command("sql")
@click.argument("statement")
@database_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default="table",
    show_default=True,
    help="A table for people, or CSV or JSON for programs.",
)
@click.option(
    "--param",
    "-p",
    "parameter_pairs",
    metavar="NAME=VALUE",
    multiple=True,
    help="Value of :NAME in the statement (repeatable); numbers stay numbers.",
)
@click.pass_context
def sql_command(
    context: click.Context,
    statement: str,
    database_url: str,
    output_format: str,
    parameter_pairs: tuple[str, ...],
) -> None:
    """Run one SQL statement on a read-only connection and print its answer.

    The tables and views are described in docs/schema.md, worked queries in
    docs/queries.md. A statement that would change the database is refused and
    nothing is changed. Safe while the manager writes.

    Example: snapreg sql "SELECT * FROM run_lineage" --format csv
    """
    parameters = _parse_parameters(parameter_pairs)
    try:
        with (
            ReadOnlyDatabase(database_url) as database,
            database.transaction() as transaction,
        ):
            superuser = transaction.superuser()
            if superuser is not None:
                click.echo(
                    f"snapreg: warning: connected as PostgreSQL superuser"
                    f" {superuser!r}: a read-only transaction does not stop a"
                    " superuser's pg_reload_conf(), replication slots or server"
                    " file reads; read as a role made with: snapreg db grant-reader"
                    " ROLE (see docs/reliability.md)",
                    err=True,
                )
            result = transaction.query(statement, parameters)
    except SnapregError as err:
        click.echo(f"snapreg: error: {' '.join(str(err).split())}", err=True)
        context.exit(1)
    _PRINTERS[output_format](result)
