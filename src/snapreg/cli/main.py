"""The ``snapreg`` command: run MUSCLE3 on a persistent registry, steer campaigns.

A thin shell: ``manage`` hands over to :mod:`snapreg.muscle3.manage`, the schema
commands to :mod:`snapreg.storage.versions`, and every other command reads through
:class:`snapreg.tools.reader.DatabaseReader`, which never creates or changes a database.
Tables are for people; ``--json`` prints the same facts for scripts. Every error
snapreg raises on purpose ends up in :func:`main` and is printed as one line on
standard error with a non-zero exit status.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
from sqlalchemy.exc import SQLAlchemyError

from snapreg.errors import SnapregError
from snapreg.storage.transactions import storage_error

#: Exit status for every error snapreg reports (click uses 2 for usage errors).
ERROR_STATUS = 1

#: Every command, by name, with the module and the click command that implement it.
COMMANDS = {
    "manage": ("snapreg.cli.manage", "manage"),
    "db": ("snapreg.cli.database", "db"),
    "campaigns": ("snapreg.cli.reading", "campaigns"),
    "workflows": ("snapreg.cli.reading", "workflows"),
    "show": ("snapreg.cli.reading", "show"),
    "export": ("snapreg.cli.reading", "export"),
    "history": ("snapreg.cli.reading", "history"),
    "sql": ("snapreg.cli.sql", "sql_command"),
    "explain": ("snapreg.cli.tools", "explain"),
    "plot": ("snapreg.cli.tools", "plot"),
    "gc": ("snapreg.cli.tools", "gc"),
    "import": ("snapreg.cli.tools", "import_command"),
    "dashboard": ("snapreg.cli.dashboard", "dashboard"),
    "verify": ("snapreg.cli.verify", "verify"),
}


class _Commands(click.Group):
    """A group that imports a command's module only when that command runs.

    ``snapreg manage`` starts a simulation where ``muscle_manager`` would; it should
    not pay for the reading commands' table renderer, the tools and the dashboard
    before the first instance starts. ``snapreg --help`` still imports them all.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command) and command.name == cmd_name
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snapreg", prog_name="snapreg")
def cli() -> None:
    """A persistent snapshot registry for MUSCLE3 campaigns.

    Run a simulation with `snapreg manage` where you would run `muscle_manager`;
    every snapshot, consistent pair and workflow snapshot is kept in a database, so
    that a crashed campaign resumes with `snapreg manage --resume-latest`. The other
    commands only read that database, except `db upgrade` (migrates it),
    `db grant-reader` (makes a reader role), `import` (adds a campaign) and
    `gc --delete` (deletes snapshot files and records it); `dashboard` serves
    what they show as a live web page.
    """


# ----------------------------------------------------------------------- main


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn every error snapreg reports on purpose into one line and a status."""
    try:
        yield
    except SnapregError as err:
        _fail(str(err))
    except SQLAlchemyError as err:  # a driver error no layer below has mapped
        _fail(str(storage_error(None, err)))
    except OSError as err:  # e.g. an output file that cannot be written
        _fail(str(err))


def _fail(message: str) -> None:
    click.echo(f"snapreg: error: {' '.join(message.split())}", err=True)
    sys.exit(ERROR_STATUS)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``snapreg`` console script."""
    with _one_line_errors():
        cli.main(args=None if argv is None else list(argv), prog_name="snapreg")
