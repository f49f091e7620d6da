"""Which files ``snapreg gc`` may delete, and unlinking them without following links.

A file may go only when it is an instance snapshot file inside the run directory
its run recorded (:func:`run_directory`), reached without a symbolic link on the
way, and neither a database (:class:`DatabaseFiles`, or any SQLite file) nor a
yMMSL file: :func:`refusal_of` says why not otherwise. Just before a file is
unlinked it is checked again, and the unlink walks down from the run directory
refusing symbolic links (:func:`unlink_if_still_safe`).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from snapreg.storage.engines import is_memory_sqlite, normalize_url

CONFIGURATION_FILE = "configuration.ymmsl"

RefusalReason = Literal[
    "outside", "not a file", "a database file", "a yMMSL file", "unreadable"
]

# What SQLite keeps beside a database, and how every SQLite database begins.
_DATABASE_SUFFIXES = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"
_YMMSL_SUFFIXES = (".ymmsl", ".yml", ".yaml")


def run_directory(snapshot_folder: str | None) -> Path | None:
    """The run directory, resolved, whose instance files a run's gc may delete.

    The parent of the run's workflow snapshot folder when it is a MUSCLE3 run
    directory (it holds ``configuration.ymmsl``); None otherwise, and for a run
    without a recorded folder: then none of its files may be deleted.
    """
    if not snapshot_folder:
        return None
    run_dir = Path(snapshot_folder).parent
    if not (run_dir / CONFIGURATION_FILE).is_file():
        return None
    return resolved(run_dir)


@dataclass(frozen=True)
class DatabaseFiles:
    """The SQLite database gc reads, and the files SQLite keeps beside it."""

    paths: frozenset[Path]
    identities: frozenset[tuple[int, int]]  # (device, inode): hard links too

    def holds(self, path: Path, target: Path) -> bool:
        """Whether ``path``, which resolves to ``target``, is one of these files."""
        if target in self.paths:
            return True
        try:
            status = os.stat(path)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) in self.identities


def database_files(database_url: str) -> DatabaseFiles:
    """The database at ``database_url`` and its journals, when it is a SQLite file."""
    url = normalize_url(database_url)
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return DatabaseFiles(frozenset(), frozenset())
    database = resolved(Path(url.database or ""))
    paths = [database, *(Path(f"{database}{suffix}") for suffix in _DATABASE_SUFFIXES)]
    identities = set()
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            continue
        identities.add((status.st_dev, status.st_ino))
    return DatabaseFiles(frozenset(paths), frozenset(identities))


class Resolver:
    """Resolves paths as :func:`resolved` does, each folder only once.

    A campaign's files lie in a few folders, and following the links of every
    component of every file's path was nearly all of a plan's time. One resolver
    serves one plan: what it remembers is as old as the plan, and every file is
    checked again, afresh, just before it is unlinked (:func:`unlink_if_still_safe`).
    """

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}
        self._folder_names: dict[str, str] = {}

    def folder(self, folder: Path) -> Path:
        """``resolved(folder)``, remembered."""
        found = self._folders.get(folder)
        if found is None:
            found = self._folders[folder] = resolved(folder)
        return found

    def file(self, path: Path, status: os.stat_result | None) -> Path:
        """``resolved(path)``, given the path's ``lstat`` (None: it has none)."""
        return Path(self.file_name(str(path), status))

    def file_name(self, name: str, status: os.stat_result | None) -> str:
        """``str(resolved(Path(name)))``, given the name's ``lstat``.

        Only a file that is itself a link, or whose last part is not a name
        (``.``, ``..``, a trailing ``/``), is resolved as a whole; any other is
        its folder, resolved, and its name. A plan looks at every file a
        campaign names, most of them in a few folders: the name is split as a
        string, and its folder's resolution looked up by that string, without
        making a ``Path`` of each file.
        """
        cut = name.rfind("/") + 1  # the folder keeps its "/": Path drops it
        folder, base = name[:cut], name[cut:]
        if base in ("", ".", "..") or (
            status is not None and stat.S_ISLNK(status.st_mode)
        ):
            return str(resolved(Path(name)))
        found = self._folder_names.get(folder)
        if found is None:
            found = str(self.folder(Path(folder)))
            if not found.endswith("/"):  # all but the root
                found += "/"
            self._folder_names[folder] = found
        return found + base


def lstat_or_none(path: str | Path) -> os.stat_result | None:
    """The path's own status, not its target's; None when it has none."""
    try:
        return os.lstat(path)
    except OSError:
        return None


def refusal_of(
    path: Path,
    run_dir: Path | None,
    database: DatabaseFiles,
    resolver: Resolver | None = None,
) -> RefusalReason | None:
    """Why a file may not be deleted, or None if it may.

    Args:
        path: The file, as a node names it.
        run_dir: The resolved run directory of the node's run (None: it has none).
        database: The files of the database gc reads.
        resolver: The plan's, to resolve each folder once; default a new one.
    """
    resolver = resolver or Resolver()
    parts = path.parts
    if (
        run_dir is None
        or not path.is_absolute()
        or ".." in parts
        or len(parts) < 5
        or parts[-4] != "instances"
        or parts[-2] != "snapshots"
    ):
        return "outside"
    status = lstat_or_none(path)
    target = resolver.file(path, status)
    if (
        # the run directory as the file names it, not one a link leads to,
        # and no link on the way down to the file's folder
        resolver.folder(Path(*parts[:-4])) != run_dir
        or resolver.folder(path.parent) != run_dir.joinpath(*parts[-4:-1])
        or not _is_instance_folder(target.parent, run_dir)
    ):
        return "outside"
    link = status is not None and stat.S_ISLNK(status.st_mode)
    if status is None or not (link or stat.S_ISREG(status.st_mode)):
        return "not a file"
    if any(name.endswith(_YMMSL_SUFFIXES) for name in (path.name, target.name)):
        return "a yMMSL file"
    if any(
        name.endswith(_DATABASE_SUFFIXES) for name in (path.name, target.name)
    ) or database.holds(path, target):
        return "a database file"
    if link and not os.path.exists(path):
        return None  # a dangling link: only the link itself can go
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError:
        return "unreadable"
    if header == _SQLITE_HEADER:
        return "a database file"
    return None


def _is_instance_folder(folder: Path, run_dir: Path) -> bool:
    """Whether a resolved folder is ``run_dir/instances/<instance>/snapshots``."""
    return folder.name == "snapshots" and folder.parent.parent == run_dir / "instances"


def resolved(path: Path) -> Path:
    """The path with every symbolic link on the way followed."""
    return Path(os.path.realpath(path))


def unlink_if_still_safe(
    path: Path, run_dir: Path | None, database: DatabaseFiles
) -> str | None:
    """Unlink the file if it is still safe to; otherwise say why not."""
    refusal = refusal_of(path, run_dir, database)
    if refusal == "outside":
        return "refused: it now lies outside the run directories"
    if refusal is not None:
        return f"refused: it is now {refusal}"
    assert run_dir is not None  # else refused as outside
    try:
        _unlink_below(run_dir, path.parts[-4:-1], path.name)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            return "refused: a folder on its way is now a symbolic link"
        return str(err)
    return None


def _unlink_below(root: Path, folders: tuple[str, ...], name: str) -> None:
    """Unlink ``root/folders.../name``, following no symbolic link below root.

    Each folder is opened relative to the one before with ``O_NOFOLLOW``: a
    folder replaced by a link since it was checked fails instead of leading
    elsewhere.
    """
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            inner = os.open(
                folder,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                dir_fd=descriptor,
            )
            os.close(descriptor)
            descriptor = inner
        os.unlink(name, dir_fd=descriptor)
    finally:
        os.close(descriptor)
