"""The registry, the only writer: the facade, the registration path, group commit,
the batch writer, workflow snapshot files, runs and the writer lease.
"""

from snapreg.registry.registrations import Refusal
from snapreg.registry.snapshot_registry import SnapshotRegistry

__all__ = ["Refusal", "SnapshotRegistry"]
