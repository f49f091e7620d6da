"""``snapreg manage``: MUSCLE3's own manager, writing its snapshots to a database.

MUSCLE3's ``muscle_manager`` keeps the snapshot graph in memory, so a crashed
manager takes the campaign's history with it. :func:`manage` runs that very command
in this process, with its own argument parsing and configuration loading, but with
the name ``SnapshotRegistry`` in ``libmuscle.manager.manager`` pointing at a factory
for :class:`snapreg.SnapshotRegistry` for the duration of the call. Everything else
(instances, settings, run directory, logs) is MUSCLE3's, and the workflow snapshot
files are written to the same place in the same form.

Every call is a new run of the campaign. With ``resume_latest``, the campaign's
newest resumable workflow snapshot is looked up in the database (every member's
snapshot file there with its recorded size; the newer ones passed over are
announced, with the reason), its ``resume:`` section is written to a yMMSL file that
is appended to the manager's configuration files, and the new run records which
workflow snapshot it resumed from.

With ``keep``, a :class:`~snapreg.tools.retention.RetentionWorker` deletes, as the
run goes, the instance snapshot files that ``snapreg gc --keep N --delete`` would
delete, woken by the registry after each commit that adds workflow snapshots.

MUSCLE3 is an optional dependency (the ``muscle3`` extra). Everything this
module needs of its internals goes through :mod:`snapreg.muscle3.compat`, which
checks that the installed release is one snapreg knows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapreg.errors import (
    ConfigurationError,
    NotFoundError,
    NotResumableError,
    WriterConflictError,
)
from snapreg.muscle3.compat import (
    INSTALL_HINT,
    ConfigurationNotLoadedError,
    Manager,
    ManagerArguments,
    ManagerUsageError,
    Muscle3NotInstalledError,
    UnsupportedMuscle3Error,
)
from snapreg.registry.lease import newest_run_writer
from snapreg.registry.snapshot_registry import SnapshotRegistry
from snapreg.rules.graph import Policy
from snapreg.rules.snapshot import WorkflowSnapshot
from snapreg.rules.workflow_file import render
from snapreg.storage.engines import (
    create_database_engine,
    describe_url,
    is_memory_sqlite,
    normalize_url,
)
from snapreg.storage.versions import ensure_schema

if TYPE_CHECKING:
    # imported where used: most runs neither resume the latest nor keep files
    from snapreg.tools.restart_points import Fallback
    from snapreg.tools.retention import RetentionWorker

__all__ = [
    "INSTALL_HINT",
    "ManagerUsageError",
    "Muscle3NotInstalledError",
    "UnsupportedMuscle3Error",
    "manage",
]

_logger = logging.getLogger(__name__)

Announce = Callable[[str], None]


def manage(
    manager_args: Sequence[str],
    *,
    database_url: str,
    campaign: str | None = None,
    resume_latest: bool = False,
    policy: Policy = "all",
    announce: Announce = print,
    force: bool = False,
    or_from_scratch: bool = False,
    keep: int | None = None,
) -> int:
    """Run ``muscle_manager`` with snapreg's registry; return its exit status.

    Nothing is created in the database before the configuration files have
    loaded and name the model to run: a command that fails on its arguments or
    its files leaves no database behind.

    Args:
        manager_args: Every ``muscle_manager`` option and argument, as on its
            command line.
        database_url: Where the campaign lives (created on first use).
        campaign: The campaign's name; default: the model's name.
        resume_latest: Resume from the campaign's newest resumable workflow
            snapshot, announcing the newer ones it skips and why; start from
            scratch (and say so) when the campaign has no workflow snapshot yet.
        policy: Which workflow snapshots to write: ``"all"`` (as MUSCLE3) or
            only the newest one per registration, ``"latest"``.
        announce: Receives one line per thing the user should know (which run,
            resumed from what), never the manager's own output.
        force: With ``resume_latest``: resume even while the campaign's newest
            run still has a live writer (its manager still runs).
        or_from_scratch: With ``resume_latest``: start from scratch (and say so)
            when the campaign has workflow snapshots but none is resumable,
            instead of refusing.
        keep: Delete, as the run goes, the instance snapshot files that none of
            the campaign's newest ``keep`` workflow snapshots needs (the rules
            of ``snapreg gc``); None deletes nothing.

    Returns:
        The manager's exit status: 0 when the simulation completed.

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is missing; the message says how to
            install it.
        UnsupportedMuscle3Error: the installed MUSCLE3 is a release snapreg does
            not know.
        ManagerUsageError: the manager's arguments do not parse.
        ConfigurationError: an unusable database URL, a resume section in the
            configuration files together with ``resume_latest``, or ``keep``
            below 1.
        WriterConflictError: ``resume_latest`` (without ``force``) while the
            campaign's newest run still has a live writer; names it.
        NotResumableError: ``resume_latest`` (without ``or_from_scratch``) when the
            campaign has workflow snapshots but none is resumable.
        SnapregError: the database cannot be opened or has an old schema.
    """
    manager = Manager("snapreg manage")
    retention = None
    if keep is not None:
        from snapreg.tools.retention import RetentionWorker

        retention = RetentionWorker(database_url, keep)
    url = normalize_url(database_url)
    if is_memory_sqlite(url):
        raise ConfigurationError(
            "snapreg manage needs a database that outlives the manager; an"
            " in-memory SQLite database does not"
        )
    args = list(manager_args)
    parsed = manager.parse_arguments(args)
    try:
        configuration = manager.load_configuration(parsed.ymmsl_files)
    except ConfigurationNotLoadedError as failed:  # the loader said why
        return failed.status
    model_name = manager.root_model_name(configuration, parsed.model)
    if model_name is not None:  # else the manager reports it before any registry
        _prepare_database(database_url)
    with ExitStack() as cleanup:
        resumed_from: int | None = None
        if resume_latest and model_name is not None:
            if configuration.resume:
                raise ConfigurationError(
                    "the configuration files already have a resume section; leave"
                    " out either that or --resume-latest"
                )
            campaign = campaign or model_name
            _check_no_live_writer(database_url, campaign, force, announce)
            resumed_from, resume_file = _resume_latest(
                manager,
                parsed,
                database_url,
                campaign,
                announce,
                cleanup,
                or_from_scratch=or_from_scratch,
            )
            if resume_file is not None:
                args.append(str(resume_file))
        return manager.run(
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
                retention=retention,
            ),
            on_cleanup_error=lambda part: _logger.warning(
                "Could not stop the manager's %s", part, exc_info=True
            ),
        )
    raise AssertionError("unreachable")  # pragma: no cover - for mypy


def _prepare_database(database_url: str) -> None:
    """Create the schema, or refuse the database, before MUSCLE3 starts anything."""
    engine = create_database_engine(database_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


def _resume_latest(
    manager: Manager,
    parsed: ManagerArguments,
    database_url: str,
    campaign: str,
    announce: Announce,
    cleanup: ExitStack,
    *,
    or_from_scratch: bool,
) -> tuple[int | None, Path | None]:
    """Find the workflow snapshot to resume from and write its resume file.

    Returns:
        The workflow snapshot's id and the resume file, both None when there is
        nothing to resume from.

    Raises:
        NotResumableError: the campaign has workflow snapshots, none resumable,
            and ``or_from_scratch`` is off.
    """
    latest, fallback = _newest_resumable(database_url, campaign)
    for line in fallback.skipped_lines():
        announce(line)
    if latest is None and fallback.skipped:
        if not or_from_scratch:
            raise NotResumableError(
                f"{fallback.nothing_resumable()}: resuming would fail when the"
                " instances start. Pass --or-from-scratch to start from scratch"
                " instead"
            )
        announce(
            f"{fallback.nothing_resumable()}; starting from scratch (--or-from-scratch)"
        )
        return None, None
    if latest is None:
        announce(
            f"campaign {campaign!r} has no workflow snapshot in"
            f" {describe_url(database_url)} yet; starting from scratch"
        )
        return None, None
    if parsed.run_dir is not None:
        folder = parsed.run_dir
    else:  # muscle_manager makes up the run directory; keep the file meanwhile
        folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
    resume_file = folder / f"snapreg_resume_{latest.id}.ymmsl"
    resume = latest.resume_files
    resume_file.write_text(
        render(
            resume,
            latest.description,
            ymmsl_version=manager.ymmsl_version_of(parsed.ymmsl_files),
        ),
        encoding="utf-8",
    )
    announce(
        f"resuming from workflow snapshot {latest.id} of run {latest.run}"
        f" ({latest.path})"
    )
    return latest.id, resume_file


def _check_no_live_writer(
    database_url: str, campaign: str, force: bool, announce: Announce
) -> None:
    """Refuse to resume a campaign whose newest run is still being written.

    Its manager still runs: a resumed run beside it would run the simulation
    twice. ``force`` goes on anyway, and says so.
    """
    from snapreg.storage.readonly import ReadOnlyStore

    with ReadOnlyStore(database_url) as store:
        writer = store.read(lambda session: newest_run_writer(session, campaign))
    if writer is None:
        return
    still = (
        f"run {writer.run} of campaign {campaign!r} is still being written by"
        f" {writer.describe()}"
    )
    if not force:
        raise WriterConflictError(
            f"{still}: its manager is still running, and resuming now would run the"
            " simulation twice. Stop that manager first, or pass --force to resume"
            " anyway"
        )
    announce(f"{still}; resuming anyway (--force)")


def _newest_resumable(
    database_url: str, campaign: str
) -> tuple[WorkflowSnapshot | None, Fallback]:
    """The campaign's newest resumable workflow snapshot (None without one, or
    without the campaign), and the newer ones passed over."""
    from snapreg.tools.reader import DatabaseReader
    from snapreg.tools.restart_points import Fallback, FileChecker

    with DatabaseReader(database_url) as reader:
        try:
            return reader.newest_resumable(campaign, FileChecker())
        except NotFoundError:  # a new campaign: nothing to resume
            return None, Fallback(campaign, None, ())


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
    retention: RetentionWorker | None,
) -> SnapshotRegistry:
    """Build the registry where MUSCLE3's Manager builds its in-memory one.

    The manager stops the worker thread (``shutdown`` and ``join``) but knows
    nothing of :meth:`SnapshotRegistry.close`, which gives up the right to write
    the run; that is left to ``cleanup``, as is stopping ``retention`` (before
    the registry is closed).
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
        on_workflow_snapshots=None if retention is None else retention.signal,
    )
    cleanup.callback(registry.close)
    if retention is not None:
        from snapreg.tools.gc_read import LiveRun

        retention.start(
            registry.campaign,
            LiveRun(
                registry.run_number,
                resume_files=_resume_files(configuration),
                unwritten=lambda: registry.unwritten_workflow_snapshot_files,
            ),
        )
        cleanup.callback(retention.stop)
    lineage = (
        ""
        if resumed_from is None
        else f", resumed from workflow snapshot {resumed_from}"
    )
    kept = (
        ""
        if retention is None
        else f"; keeping the files of the newest {retention.keep} workflow snapshots"
    )
    announce(
        f"campaign {registry.campaign!r}, run {registry.run_number}{lineage};"
        f" database {registry.database_url}{kept}"
    )
    return registry


def _resume_files(configuration: Any) -> list[str]:
    """The instance snapshot files the configuration's ``resume`` section names."""
    resume = getattr(configuration, "resume", None) or {}
    return [str(path) for path in resume.values()]
