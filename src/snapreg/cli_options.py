"""Where the command line finds its database: shared by every command.

``--db`` defaults to ``$SNAPREG_DATABASE_URL``, else ``snapreg.sqlite`` in the
current directory, for ``snapreg manage`` and every reading command alike, so that
they always agree on which database a campaign lives in.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

DATABASE_URL_VARIABLE = "SNAPREG_DATABASE_URL"
DEFAULT_DATABASE_FILE = "snapreg.sqlite"


def default_database_url() -> str:
    """``$SNAPREG_DATABASE_URL``, else ``snapreg.sqlite`` in the current directory.

    The file is named by its absolute path so that the manager, which runs its
    instances elsewhere, and every later command agree on it.
    """
    from_environment = os.environ.get(DATABASE_URL_VARIABLE)
    if from_environment:
        return from_environment
    return f"sqlite:///{Path.cwd() / DEFAULT_DATABASE_FILE}"


database_option = click.option(
    "--db",
    "database_url",
    metavar="URL",
    default=default_database_url,
    show_default=f"${DATABASE_URL_VARIABLE}, else ./{DEFAULT_DATABASE_FILE}",
    help="SQLAlchemy URL of the database, e.g. sqlite:///runs.sqlite or"
    " postgresql://user@host/db.",
)
