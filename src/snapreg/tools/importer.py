"""Rebuild a campaign from a MUSCLE3 run directory: ``snapreg import``.

A run directory of ``muscle_manager`` (stock, or ``snapreg manage`` whose database
was lost) holds everything the snapshot registry was told: the configuration
(``configuration.ymmsl``) and, per instance, every snapshot file it saved
(``instances/<instance>/snapshots/<instance>_<n>.pack``, numbered in the order it
took them). Each file is read with libmuscle's own code
(``SnapshotManager.load_snapshot_from_file`` and ``SnapshotMetadata.from_snapshot``,
exactly as the instance built the metadata it sent), and the snapshots are fed to a
:class:`~snapreg.registry.SnapshotRegistry` as a new run of the campaign, which
writes the workflow snapshot files into ``RUN_DIR/snapreg_import``.

The order in which the snapshots are registered, and how races between instances
are settled, is :mod:`snapreg.tools.import_order`'s business.
:func:`compare_with_manager` says how the result compares with the workflow
snapshot files the manager left in ``RUN_DIR/snapshots``, if any.

A run directory may come from someone else. The import reads and writes only
inside it: a symbolic link (``snapreg_import``, an instance's folder or snapshot
file) that leads out of it is refused before anything is written or recorded,
so that neither the import nor a later ``snapreg gc`` acts on another run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ymmsl

from snapreg.errors import ConfigurationError, NotFoundError
from snapreg.muscle3.compat import snapshot_reader
from snapreg.registry.snapshot_registry import SnapshotRegistry
from snapreg.rules.snapshot import WorkflowSnapshot
from snapreg.rules.topology import Topology
from snapreg.tools.import_order import (
    SnapshotFile,
    manager_workflow_snapshots,
    registration_order,
    resume_key,
)
from snapreg.tools.reader import DatabaseReader

#: The folder inside the run directory that receives the rebuilt workflow snapshots.
IMPORT_FOLDER = "snapreg_import"
CONFIGURATION_FILE = "configuration.ymmsl"

Phase = Literal["reading", "registering"]
Progress = Callable[[Phase, int, int], None]
"""Called with the phase, how many items are done and how many there are."""


@dataclass(frozen=True)
class ManagerComparison:
    """The imported workflow snapshots next to the files the manager wrote.

    Attributes:
        manager_files: Workflow snapshot files in ``RUN_DIR/snapshots``.
        imported: Workflow snapshots the import found.
        in_both: How many of the manager's are among the imported ones.
    """

    manager_files: int
    imported: int
    in_both: int

    @property
    def equal(self) -> bool:
        """Whether both are the same set of workflow snapshots."""
        return self.in_both == self.manager_files == self.imported


@dataclass(frozen=True)
class ImportResult:
    """What an import did.

    Attributes:
        campaign: The campaign it added a run to.
        run: The new run's number.
        snapshots: Instance snapshots registered.
        workflow_snapshots: The workflow snapshots found, oldest first.
        resumed_from: The workflow snapshot of the campaign whose resume section
            the run's configuration has, if any.
        snapshot_folder: Where the workflow snapshot files were written.
        comparison: How they compare with the manager's files, when it left some.
    """

    campaign: str
    run: int
    snapshots: int
    workflow_snapshots: list[WorkflowSnapshot]
    resumed_from: int | None
    snapshot_folder: Path
    comparison: ManagerComparison | None


def import_run_directory(
    run_dir: Path,
    database_url: str,
    *,
    campaign: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Rebuild a run from a MUSCLE3 run directory, as a new run of a campaign.

    Args:
        run_dir: The run directory (``muscle_manager --run-dir``).
        database_url: Where the campaign lives (created on first use).
        campaign: The campaign; default: the model's name.
        progress: Told how far reading and registering have come.

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is missing (its code reads the files).
        ConfigurationError: not a run directory, an unreadable configuration or
            snapshot file, or a run directory this campaign already holds.
        SnapregError: the database cannot be used (see SnapshotRegistry).
    """
    run_dir = run_dir.resolve()
    configuration = load_configuration(run_dir)
    topology = Topology.from_configuration(configuration)
    name = campaign or topology.model_name
    folder = run_dir / IMPORT_FOLDER
    _check_import_folder(run_dir, folder)
    existing = _existing_workflow_snapshots(database_url, name, run_dir)
    files = read_snapshot_files(run_dir, topology, configuration, progress)
    resumed_from = _resumed_from(configuration, existing)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise ConfigurationError(f"cannot create {folder}: {err}") from err
    _check_import_folder(run_dir, folder)  # again: it may have changed meanwhile
    registry = SnapshotRegistry(
        configuration,
        folder,
        database_url=database_url,
        campaign=name,
        new_run=True,
        resumed_from=resumed_from,
    )
    try:
        ordered = registration_order(
            files, topology, manager_workflow_snapshots(run_dir)
        )
        for done, snapshot_file in enumerate(ordered, start=1):
            registry.add_snapshot(snapshot_file.instance, snapshot_file.metadata)
            if progress is not None:
                progress("registering", done, len(ordered))
        run_number = registry.run_number
        found = [
            snapshot
            for snapshot in registry.workflow_snapshots()
            if snapshot.run == run_number
        ]
    finally:
        registry.close()
    return ImportResult(
        campaign=name,
        run=run_number,
        snapshots=len(files),
        workflow_snapshots=found,
        resumed_from=resumed_from,
        snapshot_folder=folder,
        comparison=compare_with_manager(run_dir, found),
    )


def load_configuration(run_dir: Path) -> Any:
    """The configuration the manager saved in the run directory.

    Raises:
        ConfigurationError: there is none, or it cannot be read.
    """
    path = run_dir / CONFIGURATION_FILE
    if not path.is_file():
        raise ConfigurationError(
            f"{run_dir} is not a MUSCLE3 run directory: it has no {CONFIGURATION_FILE}"
        )
    try:
        return ymmsl.load(path)
    except Exception as err:  # yatiml raises many kinds; all mean unreadable
        raise ConfigurationError(f"cannot read {path}: {err}") from err


def read_snapshot_files(
    run_dir: Path,
    topology: Topology,
    configuration: Any,
    progress: Progress | None = None,
) -> list[SnapshotFile]:
    """Every instance's snapshot files, each instance's in the order it took them.

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is missing.
        UnsupportedMuscle3Error: it is a release snapreg does not know.
        ConfigurationError: a file libmuscle cannot read, or an instance folder
            or snapshot file that is a link leading out of the run directory.
    """
    load_file, build_metadata = snapshot_reader()
    resumed = {str(instance) for instance in (configuration.resume or {})}
    found: list[tuple[str, int, Path]] = []
    inside = run_dir.resolve()
    for instance in topology.instances:
        folder = run_dir / "instances" / instance / "snapshots"
        if not folder.is_dir():
            continue
        _check_inside(inside, folder)
        # libmuscle names them <instance, brackets as dashes>_<n>.pack
        prefix = instance.replace("[", "-").replace("]", "")
        pattern = re.compile(re.escape(prefix) + r"_(\d+)\.pack")
        numbered = sorted(
            (int(match[1]), entry)
            for entry in folder.iterdir()
            if (match := pattern.fullmatch(entry.name)) and entry.is_file()
        )
        for _, path in numbered:
            _check_inside(inside, path)
        found.extend((instance, number, path) for number, path in numbered)
    files: list[SnapshotFile] = []
    first_of: set[str] = set()
    for done, (instance, number, path) in enumerate(found, start=1):
        try:
            snapshot = load_file(path)
        except Exception as err:  # libmuscle raises RuntimeError and msgpack's own
            raise ConfigurationError(
                f"cannot read snapshot file {path}: {err}"
            ) from err
        files.append(
            SnapshotFile(
                instance=instance,
                number=number,
                path=path,
                metadata=build_metadata(snapshot, str(path)),
                is_resume_copy=instance in resumed and instance not in first_of,
            )
        )
        first_of.add(instance)
        if progress is not None:
            progress("reading", done, len(found))
    return files


def compare_with_manager(
    run_dir: Path, imported: Iterable[WorkflowSnapshot]
) -> ManagerComparison | None:
    """Compare imported workflow snapshots with the manager's files, if any.

    Both are compared as sets of (instance, snapshot file below the run
    directory), so a run directory that was moved compares equal.
    """
    written = manager_workflow_snapshots(run_dir)
    if written is None:
        return None
    found = {
        resume_key(
            (str(instance), str(path)) for instance, path in snapshot.resume.items()
        )
        for snapshot in imported
    }
    return ManagerComparison(
        manager_files=len(set(written)),
        imported=len(found),
        in_both=len(set(written) & found),
    )


def _existing_workflow_snapshots(
    database_url: str, campaign: str, run_dir: Path
) -> list[WorkflowSnapshot]:
    """The campaign's workflow snapshots, refusing a run directory it already has.

    Raises:
        ConfigurationError: a run of the campaign already writes into this run
            directory.
    """
    try:
        with DatabaseReader(database_url) as reader:
            summaries = {summary.name: summary for summary in reader.campaigns()}
            if campaign not in summaries:
                return []
            for run in summaries[campaign].runs:
                if run.snapshot_folder is not None and Path(run.snapshot_folder) in (
                    run_dir / "snapshots",
                    run_dir / IMPORT_FOLDER,
                ):
                    raise ConfigurationError(
                        f"campaign {campaign!r} already holds {run_dir} as run"
                        f" {run.number}; import it into another campaign with"
                        " --campaign"
                    )
            return reader.workflow_snapshots(campaign)
    except NotFoundError:  # no database yet: nothing there
        return []


def _check_inside(run_dir: Path, path: Path) -> None:
    """Refuse a path that resolves to a place outside the (resolved) run directory.

    Raises:
        ConfigurationError: it does, through a symbolic link on the way.
    """
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(run_dir):
        raise ConfigurationError(
            f"{path} leads out of the run directory {run_dir} (to {target}):"
            " snapreg import reads and writes only inside the run directory it"
            " imports; nothing was written"
        )


def _check_import_folder(run_dir: Path, folder: Path) -> None:
    """Refuse an import folder that is a link, or one that leads elsewhere.

    Raises:
        ConfigurationError: it is a symbolic link (the folder is snapreg's own:
            a link there was put by someone else), or leads out of the run
            directory.
    """
    _check_inside(run_dir, folder)
    if folder.is_symlink():
        raise ConfigurationError(
            f"{folder} is a symbolic link (to {os.path.realpath(folder)}): snapreg"
            " import writes only into a folder of its own; remove the link"
        )


def _resumed_from(configuration: Any, existing: list[WorkflowSnapshot]) -> int | None:
    """The campaign's workflow snapshot whose resume section the run started from."""
    resume = {str(k): str(v) for k, v in (configuration.resume or {}).items()}
    if not resume:
        return None
    for snapshot in reversed(existing):
        if {str(k): str(v) for k, v in snapshot.resume.items()} == resume:
            return snapshot.id
    return None
