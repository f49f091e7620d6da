"""The one place where snapreg touches MUSCLE3's internals, per MUSCLE3 version.

``snapreg manage`` drives ``muscle_manager`` from the inside: it parses the
manager's arguments with the manager's own parser, loads the configuration files
with its loader, and, for the duration of the run, rebinds two module globals
(``libmuscle.manager.manager.SnapshotRegistry`` and
``muscle3.muscle_manager.Manager``) and reads private attributes of a ``Manager``
whose constructor failed. ``snapreg import`` reads instance snapshot files with
libmuscle's ``SnapshotManager`` and ``SnapshotMetadata``. None of that is MUSCLE3's
public API, so it may change in any release: every such use is here, and it is
used only with a MUSCLE3 release it was checked against (:data:`SUPPORTED`).
Anything else fails with one line saying which versions work.

What differs between the supported releases, as far as snapreg is concerned:

- 0.10 brings ymmsl 0.17, 0.11 brings ymmsl 0.18 (timelines); the names used
  here exist in both.
- Instance snapshot files have format byte ``1`` (0.10) or ``2`` (0.11), and
  neither release reads the other's: a run directory is imported with the
  release that wrote it.
- libmuscle 0.10 reports one message fewer than it counted on every F_INIT
  port in a final snapshot (see :mod:`snapreg.rules.metadata`); that is a matter of
  the metadata, not of this module.

MUSCLE3 is an optional dependency (the ``muscle3`` extra); it is imported only
when one of these functions is called.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapreg.errors import ConfigurationError, SnapregError

#: The MUSCLE3 release series whose internals this module was checked against.
SUPPORTED = ("0.10", "0.11")
INSTALL_HINT = "pip install 'snapreg[muscle3]'"

#: First byte of an instance snapshot file, per release series that writes it.
_SNAPSHOT_FORMATS = {b"1": "0.10", b"2": "0.11"}


class Muscle3NotInstalledError(SnapregError):
    """MUSCLE3 is needed but not installed."""


class UnsupportedMuscle3Error(SnapregError):
    """The installed MUSCLE3 is a release snapreg was not checked against."""


class ManagerUsageError(ConfigurationError):
    """``muscle_manager``'s arguments do not parse; the message says why."""


class ConfigurationNotLoadedError(ConfigurationError):
    """MUSCLE3's loader refused the configuration files and has said why.

    Attributes:
        status: The exit status the loader asked for.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"the configuration files did not load (status {status})")
        self.status = status


@dataclass(frozen=True)
class ManagerArguments:
    """What muscle_manager's arguments say, as far as snapreg needs to know."""

    ymmsl_files: tuple[str, ...]
    model: str | None
    run_dir: Path | None


def installed_version() -> str | None:
    """The installed MUSCLE3's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("muscle3")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # a source checkout on the path has no distribution metadata
        return str(importlib.import_module("libmuscle").__version__)
    except (ImportError, AttributeError):
        return None


def is_supported(version: str) -> bool:
    """Whether a MUSCLE3 version is in one of the :data:`SUPPORTED` series."""
    match = re.match(r"(\d+)\.(\d+)(?:\.|$)", version)
    return match is not None and f"{match[1]}.{match[2]}" in SUPPORTED


def check_version(purpose: str) -> str:
    """The installed MUSCLE3's version, refusing one snapreg does not know.

    Args:
        purpose: What needs MUSCLE3, for the message (``"snapreg manage"``).

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is not installed.
        UnsupportedMuscle3Error: it is a release outside :data:`SUPPORTED`.
    """
    version = installed_version()
    if version is None:
        raise Muscle3NotInstalledError(
            f"{purpose} needs MUSCLE3; install it with: {INSTALL_HINT}"
        )
    if not is_supported(version):
        raise UnsupportedMuscle3Error(
            f"{purpose} works with MUSCLE3 {' and '.join(SUPPORTED)}, not the"
            f" installed {version}; install a supported one with: {INSTALL_HINT}"
        )
    return version


def _import(purpose: str, *names: str) -> list[Any]:
    try:
        modules = [importlib.import_module(name) for name in names]
    except ImportError as err:
        raise Muscle3NotInstalledError(
            f"{purpose} needs MUSCLE3 (cannot import {err.name}); install it"
            f" with: {INSTALL_HINT}"
        ) from err
    check_version(purpose)
    return modules


class Manager:
    """MUSCLE3's ``muscle_manager`` command, driven from the inside."""

    def __init__(self, purpose: str = "snapreg manage") -> None:
        """Import the manager's modules and check the installed version.

        Raises:
            Muscle3NotInstalledError: MUSCLE3 is not installed.
            UnsupportedMuscle3Error: it is a release outside :data:`SUPPORTED`.
        """
        (
            self._manager_module,
            self._entry_point,
            self._ymmsl_v0_1,
            self._ymmsl_v0_2,
        ) = _import(
            purpose,
            "libmuscle.manager.manager",
            "muscle3.muscle_manager",
            "ymmsl.v0_1",
            "ymmsl.v0_2",
        )

    def parse_arguments(self, args: Sequence[str]) -> ManagerArguments:
        """Read muscle_manager's arguments with its own parser.

        Raises:
            ManagerUsageError: they do not parse; the message says why.
        """
        if not args:  # the manager's parser would answer with its whole help
            raise ManagerUsageError("Missing argument 'YMMSL_FILES...'.")
        # muscle_manager's command line is click's (a dependency of MUSCLE3's):
        # its exceptions are part of the parser this drives, not snapreg's own
        # command line, which is the only other place that imports click.
        import click

        command = self._entry_point.manage_simulation
        try:
            # without its --help, which would print the manager's internal help
            context = command.make_context(
                "snapreg manage", list(args), help_option_names=[]
            )
        except click.exceptions.ClickException as err:
            raise ManagerUsageError(err.format_message()) from err
        with context:
            params = context.params
            return ManagerArguments(
                ymmsl_files=tuple(params["ymmsl_files"]),
                model=params.get("model"),
                run_dir=Path(params["run_dir"]) if params.get("run_dir") else None,
            )

    def load_configuration(self, ymmsl_files: Sequence[str]) -> Any:
        """The configuration muscle_manager makes of the files (a v0.2 one).

        Raises:
            ConfigurationNotLoadedError: the loader refused them; it has
                printed why.
        """
        try:
            return self._entry_point.load_configuration(list(ymmsl_files))
        except SystemExit as failed:
            raise ConfigurationNotLoadedError(
                failed.code if isinstance(failed.code, int) else 1
            ) from failed

    def root_model_name(self, configuration: Any, model: str | None) -> str | None:
        """The name of the model the manager would run; None if it has no single one.

        muscle_manager itself reports a missing or ambiguous model when it runs.
        """
        try:
            reference = self._ymmsl_v0_2.Reference(model) if model else None
            return str(configuration.root_model(reference).name)
        except (RuntimeError, ValueError, KeyError):
            return None

    def ymmsl_version_of(self, ymmsl_files: Sequence[str]) -> str:
        """The yMMSL version the manager combines the files in: v0.1 or v0.2.

        muscle_manager combines the files the v0.1 way only if every one of them
        is v0.1.

        Raises:
            ConfigurationNotLoadedError: a file does not load; the loader has
                printed why.
        """
        try:
            documents = self._entry_point.load_files(list(ymmsl_files))
        except SystemExit as failed:
            raise ConfigurationNotLoadedError(
                failed.code if isinstance(failed.code, int) else 1
            ) from failed
        all_v0_1 = all(
            isinstance(document, self._ymmsl_v0_1.PartialConfiguration)
            for document in documents
        )
        return "v0.1" if all_v0_1 else "v0.2"

    def run(
        self,
        args: Sequence[str],
        open_registry: Callable[[Any, Path, Any], Any],
        *,
        on_cleanup_error: Callable[[str], None],
    ) -> int:
        """Run muscle_manager with ``open_registry`` building its registry.

        Args:
            args: muscle_manager's options and arguments.
            open_registry: Called as MUSCLE3's Manager calls
                ``SnapshotRegistry(configuration, snapshot_folder,
                topology_store)``.
            on_cleanup_error: Told which part of a half-built manager could not
                be stopped.

        Returns:
            The manager's exit status.
        """
        manager_class = self._entry_point.Manager

        def build_manager(*manager_args: Any, **manager_kwargs: Any) -> Any:
            # The Manager starts its instantiator process and threads before it
            # builds the registry; if the registry (or anything after it) fails,
            # they must be stopped, or this process would never exit.
            manager = manager_class.__new__(manager_class)
            try:
                manager.__init__(*manager_args, **manager_kwargs)
            except BaseException:
                _stop_half_built_manager(manager, on_cleanup_error)
                raise
            return manager

        with (
            _replaced(self._manager_module, "SnapshotRegistry", open_registry),
            _replaced(self._entry_point, "Manager", build_manager),
        ):
            try:
                self._entry_point.manage_simulation.main(
                    args=list(args), prog_name="snapreg manage"
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


def _stop_half_built_manager(manager: Any, report: Callable[[str], None]) -> None:
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
            report(part)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as Python would have for sys.exit("message")
    return 1


def snapshot_reader(
    purpose: str = "snapreg import",
) -> tuple[Callable[[Path], Any], Callable[[Any, str], Any]]:
    """libmuscle's own reader of instance snapshot files, and its metadata builder.

    Returns:
        ``load(path)``, which returns the snapshot in the file, and
        ``metadata(snapshot, filename)``, which builds the
        ``libmuscle.snapshot.SnapshotMetadata`` the instance sent for it.

    Raises:
        Muscle3NotInstalledError: MUSCLE3 is not installed.
        UnsupportedMuscle3Error: it is a release outside :data:`SUPPORTED`.
    """
    manager_module, snapshot_module = _import(
        purpose, "libmuscle.snapshot_manager", "libmuscle.snapshot"
    )
    version = check_version(purpose)
    load_file = manager_module.SnapshotManager.load_snapshot_from_file

    def load(path: Path) -> Any:
        with open(path, "rb") as snapshot_file:
            written_by = _SNAPSHOT_FORMATS.get(snapshot_file.read(1))
        if written_by is not None and not version.startswith(written_by + "."):
            # libmuscle's own message ("edited?") would send users looking for
            # a corrupt file; it is only another release's format.
            raise ConfigurationError(
                f"it was written by MUSCLE3 {written_by}, which the installed"
                f" {version} cannot read; import it with MUSCLE3 {written_by}"
            )
        return load_file(path)

    return load, snapshot_module.SnapshotMetadata.from_snapshot
