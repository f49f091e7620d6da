"""What a manager pays before it starts: the modules a process imports.

A short simulation under ``snapreg manage`` pays snapreg's imports on every start:
Alembic (11 MiB, 0.15 s) is needed only when a schema must be created or upgraded,
and the reading commands' table renderer and the tools never are. Each case runs
in a fresh interpreter and lists the heavy packages it ended up importing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snapreg import upgrade_database
from snapreg.storage.versions import head_revision, known_revisions

TESTS = Path(__file__).resolve().parent

#: Packages the registry's hot path must not import.
HEAVY = ("alembic", "mako", "rich", "pygments", "matplotlib", "starlette", "jinja2")


#: What only some runs need: PostgreSQL's dialect (on SQLite), and the tools
#: behind --keep and --resume-latest.
ON_DEMAND = ("sqlalchemy.dialects.postgresql", "snapreg.tools")


def _imported_after(code: str, watched: tuple[str, ...] = HEAVY) -> set[str]:
    """The modules of ``watched`` imported by running ``code`` in a fresh
    interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _open_and_close_a_registry(folder: Path, url: str) -> str:
    """Code that opens a registry on the database at ``url`` and closes it."""
    return (
        "from pathlib import Path\n"
        "from snapreg import SnapshotRegistry\n"
        "from support.streams import macro_micro\n"
        "config = macro_micro(1).config\n"
        f"registry = SnapshotRegistry(config, Path({str(folder)!r}),"
        f" database_url={url!r})\n"
        "registry.close()"
    )


def test_opening_a_registry_on_a_current_schema_imports_no_alembic(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    upgrade_database(url)
    assert _imported_after(_open_and_close_a_registry(tmp_path, url)) == set()


def test_a_registry_on_sqlite_loads_neither_postgresql_nor_the_tools(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    upgrade_database(url)
    code = _open_and_close_a_registry(tmp_path, url)
    assert _imported_after(code, ON_DEMAND) == set()


def test_a_new_database_still_gets_its_schema_from_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    assert "alembic" in _imported_after(_open_and_close_a_registry(tmp_path, url))


def test_the_manage_command_imports_only_what_it_runs(tmp_path: Path) -> None:
    code = (
        "from snapreg.cli.main import main\n"
        "try:\n"
        "    main(['manage', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
    )
    assert _imported_after(code) == set()
    assert _imported_after(code, ON_DEMAND) == set()
    # past the options: the manager's module loads, then the file is not found
    missing = tmp_path / "missing.ymmsl"
    code = (
        "from snapreg.cli.main import main\n"
        "try:\n"
        f"    main(['manage', '--db', 'sqlite:///{tmp_path}/c.sqlite', '{missing}'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code != 0, exit.code\n"
        "import sys\n"
        "assert 'snapreg.muscle3.manage' in sys.modules\n"
    )
    assert _imported_after(code, ON_DEMAND) == set()


def test_the_known_revisions_are_the_migrations_folder() -> None:
    from alembic.script import ScriptDirectory

    from snapreg.storage.versions import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()]
    assert known_revisions() == {r.revision for r in script.walk_revisions()}
