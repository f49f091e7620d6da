"""Workflow snapshot files on disk: names, atomic writes, retries.

The registry writes each file after its rows have committed; a file that
cannot be written waits and is tried again (see :class:`FileWriter`), and the
files whose rows commit but that are not written yet can be asked for at any
time, from any thread (:attr:`FileWriter.unwritten`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Collection, Iterable
from datetime import datetime
from pathlib import Path

from snapreg.rules.workflow_file import render

_logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".snapreg-tmp-"


class NameAllocator:
    """Hands out unused workflow snapshot file names in one folder.

    Names already given out are remembered for the current second, so a burst of
    workflow snapshots does not stat a growing list of candidates each time. The
    names are absolute, with every symbolic link of the folder resolved, as the
    workflow snapshot rows record them.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._second = ""
        self._next_suffix = 0

    def allocate(self, taken_at: datetime, reserved: set[str]) -> Path:
        """A path that no file and no reserved name uses yet."""
        second = taken_at.strftime("%Y%m%d_%H%M%S")
        if second != self._second:
            self._second, self._next_suffix = second, 0
        while True:
            suffix = self._next_suffix
            self._next_suffix += 1
            name = (
                f"snapshot_{second}.ymmsl"
                if suffix == 0
                else (f"snapshot_{second}_{suffix}.ymmsl")
            )
            path = self.folder / name
            if str(path) not in reserved and not path.exists():
                return path


def snapshot_file_size(filename: str) -> int | None:
    """The size of an instance's snapshot file; None if the manager cannot see it."""
    if not filename:
        return None
    try:
        return os.stat(filename).st_size
    except (OSError, ValueError):  # gone, not ours to see, or not a path
        return None


def write_file(path: Path, text: str, *, sync: bool) -> None:
    """Write a file atomically: a temporary file in the same folder, then rename.

    Raises:
        OSError: the file could not be written (no temporary file is left).
    """
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{path.name}")
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            if sync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError:
        # a read-only folder: nothing could have been created to remove
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


class FileWriter:
    """Writes workflow snapshot files once their rows have committed.

    A file that cannot be written (a full or read-only folder) is reported at once
    with a warning, kept, and tried again before every later write and when the run
    ends; its row is in the database, so a registry that opens the run again
    writes it too.

    The registry's writing thread tells it which files a transaction is about to
    commit (:meth:`expect`, before the commit) and which did not commit after all
    (:meth:`forget`); :attr:`unwritten` then holds every file whose row may have
    committed and that is not written yet, for any thread to read.
    """

    def __init__(self, *, sync: bool, ymmsl_version: str = "v0.2") -> None:
        """Args:
        sync: fsync each file before it is renamed into place.
        ymmsl_version: The yMMSL version of the files, the configuration's.
        """
        self._sync = sync
        self._ymmsl_version = ymmsl_version
        self._waiting: dict[Path, str] = {}
        # files whose rows are committing or committed, not yet written or waiting
        self._expected: set[Path] = set()
        # guards both, for the threads that read unwritten
        self._lock = threading.Lock()

    @property
    def waiting(self) -> list[Path]:
        """The files not written yet, oldest first."""
        with self._lock:
            return list(self._waiting)

    @property
    def unwritten(self) -> frozenset[Path]:
        """Every file whose row may have committed and that is not written yet.

        The files announced by :meth:`expect` and not written since, and the
        files waiting to be tried again. Safe to read from any thread.
        """
        with self._lock:
            return frozenset(self._expected).union(self._waiting)

    def expect(self, paths: Collection[Path]) -> None:
        """Note files whose rows are about to commit: unwritten until written.

        Called before the commit, so that no row is ever committed with its file
        missing from :attr:`unwritten` until the file is written.
        """
        if not paths:  # most registrations complete no workflow snapshot
            return
        with self._lock:
            self._expected.update(paths)

    def forget(self, paths: Iterable[Path]) -> None:
        """Drop files whose rows did not commit after all."""
        with self._lock:
            self._expected.difference_update(paths)

    def write_workflow_snapshot(
        self, path: Path, resume: dict[str, str], description: str
    ) -> bool:
        """Render and write one workflow snapshot file (see :meth:`write`)."""
        return self.write(
            path, render(resume, description, ymmsl_version=self._ymmsl_version)
        )

    def write(self, path: Path, text: str) -> bool:
        """Write one file after the ones still waiting; False if it must wait too."""
        self.retry()
        return self._write(path, text)

    def retry(self) -> None:
        """Try the waiting files again, oldest first, until one fails."""
        if not self._waiting:
            return
        for path, text in list(self._waiting.items()):
            try:
                write_file(path, text, sync=self._sync)
            except OSError as err:  # reported when it first failed
                _logger.debug("Still cannot write %s: %s", path, err)
                return
            with self._lock:
                del self._waiting[path]
            _logger.info("Wrote workflow snapshot file %s after all", path)

    def _write(self, path: Path, text: str) -> bool:
        try:
            write_file(path, text, sync=self._sync)
        except OSError as err:
            with self._lock:
                self._waiting[path] = text
                self._expected.discard(path)
            _logger.warning(
                "Could not write workflow snapshot file %s (%s); %d file(s) wait to"
                " be written, tried again with each registration and when the run"
                " ends",
                path,
                err.strerror or err,
                len(self._waiting),
            )
            return False
        with self._lock:
            self._expected.discard(path)
        return True


def remove_temporary_files(folder: Path) -> int:
    """Delete half-written files a crash left behind; returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for leftover in folder.glob(f"{TEMPORARY_PREFIX}*"):
        try:
            leftover.unlink()
            removed += 1
        except OSError as err:  # pragma: no cover - racing cleanup
            _logger.warning("Could not remove %s: %s", leftover, err)
    return removed
