"""The registry, the only writer: the public facade, runs and the writer lease,
and the workflow snapshot files.
"""

from snapreg.registry.snapshot_registry import Refusal, SnapshotRegistry

__all__ = ["Refusal", "SnapshotRegistry"]
