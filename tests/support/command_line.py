"""Run the ``snapreg`` command in this process, as its console script would."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from snapreg.cli.main import main


@dataclass(frozen=True)
class Outcome:
    """What a command printed and its exit status."""

    status: int
    stdout: str
    stderr: str


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """Run ``snapreg ARGS`` through :func:`snapreg.cli.main`."""
    capsys.readouterr()  # forget what came before
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    code = exited.value.code
    return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)


SUPERUSER_WARNING = "snapreg: warning: connected as PostgreSQL superuser"


def without_superuser_warning(stderr: str) -> list[str]:
    """Standard error's lines without the warning a superuser connection gets."""
    return [
        line for line in stderr.splitlines() if not line.startswith(SUPERUSER_WARNING)
    ]
