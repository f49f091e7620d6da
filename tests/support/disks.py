"""Small file systems of a test's own: full and read-only disks, for fault injection.

A tmpfs of a few hundred KiB is mounted in the test's folder (this needs root, as
CI and the development machine run; elsewhere the tests that use it are skipped
with the reason, except under CI, where they fail). A filler file takes the room
that is left when the test wants the disk full.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = ".filler"


class SmallDisk:
    """A tmpfs mounted at ``path`` that a test fills, empties and makes read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        """Take every free byte with a filler file."""
        with open(self.path / FILLER, "ab", buffering=0) as filler:
            for size in (65536, 4096, 1):  # big steps, then the last partial block
                try:
                    while filler.write(b"\0" * size):
                        pass
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        """Give the filler's room back."""
        (self.path / FILLER).unlink(missing_ok=True)

    def read_only(self, read_only: bool = True) -> None:
        """Remount read-only (root ignores file modes, so a mode would not do)."""
        mode = "ro" if read_only else "rw"
        subprocess.run(
            ["mount", "-o", f"remount,{mode}", str(self.path)],
            check=True,
            capture_output=True,
        )


def _mount_refused(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot mount a tmpfs for fault injection: {reason}")
    pytest.skip(f"cannot mount a tmpfs for fault injection: {reason}")


@contextmanager
def small_disk(path: Path, size: str = "512k") -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block's duration."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _mount_refused("not root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        _mount_refused(mounted.stderr.strip())
    try:
        yield SmallDisk(path)
    finally:
        # lazily: a file a failed test left open must not keep the mount
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
