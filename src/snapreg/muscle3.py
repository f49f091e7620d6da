"""``snapreg manage``: MUSCLE3's own manager, writing its snapshots to a database.

MUSCLE3's ``muscle_manager`` keeps the snapshot graph in memory, so a crashed
manager takes the campaign's history with it. :func:`manage` runs that very command
in this process, with its own argument parsing and configuration loading, but with
the name ``SnapshotRegistry`` in ``libmuscle.manager.manager`` pointing at a factory
for :class:`snapreg.SnapshotRegistry` for the duration of the call. Everything else
(instances, settings, run directory, logs) is MUSCLE3's, and the workflow snapshot
files are written to the same place in the same form.

Every call is a new run of the campaign. With ``resume_latest``, the campaign's
newest workflow snapshot is looked up in the database, its ``resume:`` section is
written to a yMMSL file that is appended to the manager's configuration files, and
the new run records which workflow snapshot it resumed from.

MUSCLE3 is an optional dependency (the ``muscle3`` extra); only this module imports
it, and only when called.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from snapreg.database import (
    create_database_engine,
    describe_url,
    ensure_schema,
    is_memory_sqlite,
    normalize_url,
)
from snapreg.errors import ConfigurationError, NotFoundError, SnapregError
from snapreg.graph import Policy
from snapreg.materialize import render
from snapreg.reader import DatabaseReader
from snapreg.registry import SnapshotRegistry
from snapreg.snapshot import WorkflowSnapshot

_logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'snapreg[muscle3]'"

Announce = Callable[[str], None]


class Muscle3NotInstalledError(SnapregError):
    """``snapreg manage`` was called without MUSCLE3 installed."""


@dataclass(frozen=True)
class _Muscle3:
    """The modules of MUSCLE3 that ``snapreg manage`` drives (typed loosely)."""

    manager_module: Any  # libmuscle.manager.manager: builds the registry
    entry_point: Any  # muscle3.muscle_manager: the muscle_manager command
    ymmsl_v0_1: Any
    ymmsl_v0_2: Any


@dataclass(frozen=True)
class _ManagerArguments:
    """What muscle_manager's arguments say, as far as snapreg needs to know."""

    ymmsl_files: tuple[str, ...]
    model: str | None
    run_dir: Path | None


def manage(
    manager_args: Sequence[str],
    *,
    database_url: str,
    campaign: str | None = None,
    resume_latest: bool = False,
    policy: Policy = "all",
    announce: Announce = print,
) -> int:
    """Run ``muscle_manager`` with snapreg's registry; return its exit status.

    Args:
        manager_args: Every ``muscle_manager`` option and argument, as on its
            command line.
        database_url: Where the campaign lives (created on first use).
        campaign: The campaign's name; default: the model's name.
        resume_latest: Resume from the campaign's newest workflow snapshot, or
            start from scratch (and say so) when it has none.
        policy: Which workflow snapshots to write: ``"all"`` (as MUSCLE3) or
            only the newest one per registration, ``"latest"``.
        announce: Receives one line per thing the user should know (which run,
            resumed from what), never the manager's own output.

    Returns:
        The manager's exit status: 0 when the simulation completed.

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is missing; the message says how to
            install it.
        ConfigurationError: an unusable database URL, or a resume section in the
            configuration files together with ``resume_latest``.
        SnapregError: the database cannot be opened or has an old schema.
    """
    muscle3 = _import_muscle3()
    url = normalize_url(database_url)
    if is_memory_sqlite(url):
        raise ConfigurationError(
            "snapreg manage needs a database that outlives the manager; an"
            " in-memory SQLite database does not"
        )
    args = list(manager_args)
    parsed = _parse_manager_args(muscle3, args)
    if parsed is not None:  # else the manager only prints help or a usage error
        _prepare_database(database_url)
    with ExitStack() as cleanup:
        resumed_from: int | None = None
        if resume_latest and parsed is not None:
            found = _resume_latest(
                muscle3, parsed, database_url, campaign, announce, cleanup
            )
            if isinstance(found, int):
                return found  # the configuration files did not load
            campaign, resumed_from, resume_file = found
            if resume_file is not None:
                args.append(str(resume_file))
        return _run_manager(
            muscle3,
            args,
            lambda configuration, snapshot_folder, topology_store: _open_registry(
                configuration,
                snapshot_folder,
                topology_store,
                database_url=database_url,
                campaign=campaign,
                resumed_from=resumed_from,
                policy=policy,
                announce=announce,
                cleanup=cleanup,
            ),
        )
    raise AssertionError("unreachable")  # pragma: no cover - for mypy


def _import_muscle3() -> _Muscle3:
    try:
        return _Muscle3(
            manager_module=importlib.import_module("libmuscle.manager.manager"),
            entry_point=importlib.import_module("muscle3.muscle_manager"),
            ymmsl_v0_1=importlib.import_module("ymmsl.v0_1"),
            ymmsl_v0_2=importlib.import_module("ymmsl.v0_2"),
        )
    except ImportError as err:
        raise Muscle3NotInstalledError(
            f"snapreg manage needs MUSCLE3 (cannot import {err.name}); install it"
            f" with: {INSTALL_HINT}"
        ) from err


def _parse_manager_args(muscle3: _Muscle3, args: list[str]) -> _ManagerArguments | None:
    """Read the arguments with muscle_manager's own parser.

    Returns None when they do not parse, or ask for help: the manager itself says
    what is wrong when it runs with them.
    """
    command = muscle3.entry_point.manage_simulation
    try:
        context = command.make_context("snapreg manage", list(args))
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None
    with context:
        params = context.params
        return _ManagerArguments(
            ymmsl_files=tuple(params["ymmsl_files"]),
            model=params.get("model"),
            run_dir=Path(params["run_dir"]) if params.get("run_dir") else None,
        )


def _prepare_database(database_url: str) -> None:
    """Create the schema, or refuse the database, before MUSCLE3 starts anything."""
    engine = create_database_engine(database_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


def _resume_latest(
    muscle3: _Muscle3,
    parsed: _ManagerArguments,
    database_url: str,
    campaign: str | None,
    announce: Announce,
    cleanup: ExitStack,
) -> tuple[str | None, int | None, Path | None] | int:
    """Find the workflow snapshot to resume from and write its resume file.

    Returns:
        The campaign, the workflow snapshot's id and the resume file (both None
        when there is nothing to resume from), or an exit status when the
        configuration files do not load (muscle_manager's loader said why).
    """
    try:
        configuration = muscle3.entry_point.load_configuration(parsed.ymmsl_files)
    except SystemExit as failed:
        return _exit_status(failed.code)
    if configuration.resume:
        raise ConfigurationError(
            "the configuration files already have a resume section; leave out"
            " either that or --resume-latest"
        )
    if campaign is None:
        try:
            model_reference = (
                muscle3.ymmsl_v0_2.Reference(parsed.model) if parsed.model else None
            )
            campaign = str(configuration.root_model(model_reference).name)
        except RuntimeError:  # no single model: the manager reports it
            return None, None, None
    latest = _latest_workflow_snapshot(database_url, campaign)
    if latest is None:
        announce(
            f"campaign {campaign!r} has no workflow snapshot in"
            f" {describe_url(database_url)} yet; starting from scratch"
        )
        return campaign, None, None
    if parsed.run_dir is not None:
        folder = parsed.run_dir
    else:  # muscle_manager makes up the run directory; keep the file meanwhile
        folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
    resume_file = folder / f"snapreg_resume_{latest.id}.ymmsl"
    resume_file.write_text(_resume_text(muscle3, parsed, latest), encoding="utf-8")
    announce(
        f"resuming from workflow snapshot {latest.id} of run {latest.run}"
        f" ({latest.path})"
    )
    return campaign, latest.id, resume_file


def _latest_workflow_snapshot(
    database_url: str, campaign: str
) -> WorkflowSnapshot | None:
    """The campaign's newest workflow snapshot; None without one (or no campaign)."""
    with DatabaseReader(database_url) as reader:
        try:
            return reader.latest_workflow_snapshot(campaign)
        except NotFoundError:  # a new campaign: nothing to resume
            return None


def _resume_text(
    muscle3: _Muscle3, parsed: _ManagerArguments, snapshot: WorkflowSnapshot
) -> str:
    """The snapshot's resume yMMSL, in the yMMSL version of the user's files.

    muscle_manager combines the files the v0.1 way only if every one of them is
    v0.1, so the resume file is v0.1 exactly then.
    """
    documents = muscle3.entry_point.load_files(parsed.ymmsl_files)
    all_v0_1 = all(
        isinstance(document, muscle3.ymmsl_v0_1.PartialConfiguration)
        for document in documents
    )
    resume = {str(instance): str(path) for instance, path in snapshot.resume.items()}
    return render(
        resume, snapshot.description, ymmsl_version="v0.1" if all_v0_1 else "v0.2"
    )


def _open_registry(
    configuration: Any,
    snapshot_folder: Path,
    topology_store: Any,
    *,
    database_url: str,
    campaign: str | None,
    resumed_from: int | None,
    policy: Policy,
    announce: Announce,
    cleanup: ExitStack,
) -> SnapshotRegistry:
    """Build the registry where MUSCLE3's Manager builds its in-memory one.

    The manager stops the worker thread (``shutdown`` and ``join``) but knows
    nothing of :meth:`SnapshotRegistry.close`, which gives up the right to write
    the run; that is left to ``cleanup``.
    """
    registry = SnapshotRegistry(
        configuration,
        snapshot_folder,
        topology_store,
        database_url=database_url,
        campaign=campaign,
        new_run=True,
        resumed_from=resumed_from,
        policy=policy,
    )
    cleanup.callback(registry.close)
    lineage = (
        ""
        if resumed_from is None
        else f", resumed from workflow snapshot {resumed_from}"
    )
    announce(
        f"campaign {registry.campaign!r}, run {registry.run_number}{lineage};"
        f" database {registry.database_url}"
    )
    return registry


def _run_manager(
    muscle3: _Muscle3, args: list[str], open_registry: Callable[..., SnapshotRegistry]
) -> int:
    """Run the muscle_manager command with ``open_registry`` as its registry."""
    manager_class = muscle3.entry_point.Manager

    def build_manager(*manager_args: Any, **manager_kwargs: Any) -> Any:
        # The Manager starts its instantiator process and threads before it builds
        # the registry; if the registry (or anything after it) fails, they must be
        # stopped, or this process would never exit.
        manager = manager_class.__new__(manager_class)
        try:
            manager.__init__(*manager_args, **manager_kwargs)
        except BaseException:
            _stop_half_built_manager(manager)
            raise
        return manager

    with (
        _replaced(muscle3.manager_module, "SnapshotRegistry", open_registry),
        _replaced(muscle3.entry_point, "Manager", build_manager),
    ):
        try:
            muscle3.entry_point.manage_simulation.main(
                args=args, prog_name="snapreg manage"
            )
        except SystemExit as finished:
            return _exit_status(finished.code)
    return 0


@contextmanager
def _replaced(module: Any, name: str, replacement: Any) -> Iterator[None]:
    """Point ``module.name`` at ``replacement`` inside the block only."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def _stop_half_built_manager(manager: Any) -> None:
    """Stop what a Manager whose constructor failed had already started."""
    for part, stop in [
        ("_instance_manager", "shutdown"),
        ("_profile_store", "shutdown"),
        ("_logger", "close"),
    ]:
        component = getattr(manager, part, None)
        if component is None:
            continue
        try:
            getattr(component, stop)()
        except Exception:  # keep stopping the rest; the original error is raised
            _logger.warning("Could not stop the manager's %s", part, exc_info=True)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    click.echo(code, err=True)  # as Python would have for sys.exit("message")
    return 1
