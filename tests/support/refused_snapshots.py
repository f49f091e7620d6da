"""A MUSCLE3 component whose manager gets snapshot metadata snapreg must refuse.

It sends, through its own connection to the manager as libmuscle would, a snapshot
with a NaN wallclock time, a good one, and one whose message counts went down; then
it ends. Used to check that a refused registration never leaves an instance waiting.
"""

from __future__ import annotations

import math

from libmuscle import Instance
from libmuscle.snapshot import SnapshotMetadata


def snapshot(wallclock_time: float, count: int, filename: str) -> SnapshotMetadata:
    return SnapshotMetadata(
        triggers=["refused_snapshots test"],
        wallclock_time=wallclock_time,
        timestamp=float(count),
        next_timestamp=None,
        port_message_counts={"unused": [count]},
        is_final_snapshot=False,
        snapshot_filename=filename,
    )


def main() -> None:
    instance = Instance()
    # libmuscle's client to the manager: the one way to send metadata of our own
    manager = instance._Instance__manager  # type: ignore[attr-defined]
    while instance.reuse_instance():
        manager.submit_snapshot_metadata(snapshot(math.nan, 1, "/refused/nan.pack"))
        manager.submit_snapshot_metadata(snapshot(1.0, 5, "/accepted/good.pack"))
        manager.submit_snapshot_metadata(snapshot(2.0, 3, "/refused/lower.pack"))


if __name__ == "__main__":
    main()
