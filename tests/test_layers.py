"""The layers as the README's layout table states them, checked on the source.

Only the command line (``snapreg.cli``) imports click or rich: library code
returns data and raises snapreg's errors; printing, exit statuses and options
are the command line's business. Only the dashboard (``snapreg.dashboard``)
imports the web stack (Starlette, uvicorn, Jinja2: the ``dashboard`` extra), and
nothing else loads it, not even ``snapreg --help``: without the extra, every
other command works.

And the house rule on size, so that each module stays one concern that can be
read whole: no module over :data:`MAX_MODULE_LINES` lines, no class over
:data:`MAX_CLASS_LINES`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import snapreg

PACKAGE = Path(snapreg.__file__).parent
USER_INTERFACE_LIBRARIES = ("click", "rich")
WEB_LIBRARIES = ("starlette", "uvicorn", "jinja2")
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 400

#: Modules outside snapreg.cli that may import click, and only inside a function.
#: snapreg.muscle3.compat drives muscle_manager's own command line, which MUSCLE3
#: wrote with click: it catches that parser's click exceptions to turn them into
#: snapreg's errors. That is the MUSCLE3 boundary speaking MUSCLE3's interface, not
#: snapreg's command line, and it is imported only when the parser is used.
INSIDE_A_FUNCTION_ONLY = {"snapreg.muscle3.compat": {"click"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _module_name(path).startswith(("snapreg.cli", "snapreg.migrations"))
    ]


def _imported_roots(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def test_only_the_command_line_imports_click_or_rich() -> None:
    found = []
    for path in _library_modules():
        name = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            for root in _imported_roots(node):
                if root not in USER_INTERFACE_LIBRARIES:
                    continue
                allowed = root in INSIDE_A_FUNCTION_ONLY.get(name, set())
                if not allowed or id(node) in top_level:
                    found.append(f"{name}:{getattr(node, 'lineno', '?')} {root}")
    assert found == []
    assert len(_library_modules()) > 20  # the walk sees the package


def test_importing_every_library_module_loads_neither_click_nor_rich() -> None:
    names = [_module_name(path) for path in _library_modules()]
    program = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {list(USER_INTERFACE_LIBRARIES)!r}"
        " if m in sys.modules]))\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == []


def _modules_importing(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Per module of the package, the imports of ``roots`` it has (any depth)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for root in _imported_roots(node):
                if root in roots:
                    found.setdefault(_module_name(path), []).append(root)
    return found


def test_only_the_dashboard_imports_the_web_stack() -> None:
    importing = _modules_importing(WEB_LIBRARIES)

    assert importing  # the walk sees the dashboard's imports
    assert [
        name for name in importing if not name.startswith("snapreg.dashboard")
    ] == []


def test_nothing_but_the_dashboard_loads_the_web_stack() -> None:
    names = [
        _module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _module_name(path).startswith(
            ("snapreg.dashboard", "snapreg.migrations")
        )
    ]
    names.append("snapreg.dashboard.server")  # what snapreg dashboard imports first
    program = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([m for m in {list(WEB_LIBRARIES)!r} if m in sys.modules]))\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert "snapreg.cli.main" in names
    assert json.loads(finished.stdout) == []


def _class_sizes(tree: ast.Module) -> list[tuple[str, int]]:
    """Every class of a module, nested ones too, with its lines (decorators in)."""
    sizes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            sizes.append((node.name, node.end_lineno - first + 1))
    return sizes


def test_no_module_is_over_500_lines_and_no_class_over_400() -> None:
    too_long = []
    modules = classes = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        lines = len(text.splitlines())
        modules += 1
        if lines > MAX_MODULE_LINES:
            too_long.append(
                f"{where}: {lines} lines, over {MAX_MODULE_LINES} for a module"
            )
        for name, size in _class_sizes(ast.parse(text, filename=str(path))):
            classes += 1
            if size > MAX_CLASS_LINES:
                too_long.append(
                    f"{where}: class {name} is {size} lines,"
                    f" over {MAX_CLASS_LINES} for a class"
                )
    assert too_long == [], "split these along their concerns:\n" + "\n".join(too_long)
    assert modules > 20 and classes > 20  # the walk sees the package
