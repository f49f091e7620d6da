"""Options and types shared by every command.

``--db`` defaults to ``$SNAPREG_DATABASE_URL``, else ``snapreg.sqlite`` in the
current directory, for ``snapreg manage`` and every reading command alike, so that
they always agree on which database a campaign lives in.

Every integer a command takes is bounded by what the database can hold: SQLite
raises ``OverflowError`` for an integer beyond 64 bits and PostgreSQL refuses one
beyond its column's type, so an absurd number is a usage error here instead.
"""

from __future__ import annotations

from pathlib import Path

import click

from snapreg.storage.engines import (
    DATABASE_URL_VARIABLE,
    DEFAULT_DATABASE_FILE,
    default_database_url,
)
from snapreg.storage.schema import MAX_ID, MAX_NUMBER


def command_line_database_url() -> str:
    """``$SNAPREG_DATABASE_URL``, else ``snapreg.sqlite`` in the current directory.

    The file is named by its absolute path so that the manager, which runs its
    instances elsewhere, and every later command agree on it.
    """
    return default_database_url(Path.cwd())


database_option = click.option(
    "--db",
    "database_url",
    metavar="URL",
    default=command_line_database_url,
    show_default=f"${DATABASE_URL_VARIABLE}, else ./{DEFAULT_DATABASE_FILE}",
    help="SQLAlchemy URL of the database, e.g. sqlite:///runs.sqlite or"
    " postgresql://user@host/db.",
)


#: A workflow snapshot (or other row) id.
ROW_ID = click.IntRange(min=1, max=MAX_ID)
#: A run number.
RUN_NUMBER = click.IntRange(min=1, max=MAX_NUMBER)


def count(minimum: int) -> click.IntRange:
    """A count of things, from ``minimum`` up to what a 64-bit integer holds."""
    return click.IntRange(min=minimum, max=MAX_ID)


campaign_option = click.option(
    "--campaign",
    metavar="NAME",
    help="The campaign; default: the only one in the database.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)
run_option = click.option("--run", "run_number", type=RUN_NUMBER, help="Only this run.")
