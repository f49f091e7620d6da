"""The registry's two entry points, both raising what they refuse.

``add_snapshot`` raises; ``register_snapshot`` (MUSCLE3's threaded entry point)
answers False and keeps the error in ``refusals``. Tests that check the error of
either go through these.
"""

from __future__ import annotations

from typing import Any

from snapreg import SnapshotRegistry


def register_or_raise(registry: SnapshotRegistry, instance: Any, metadata: Any) -> None:
    """``register_snapshot``, raising the error of a refused registration."""
    refused = len(registry.refusals)
    if not registry.register_snapshot(instance, metadata):
        refusals = registry.refusals
        assert len(refusals) == refused + 1, "a False answer keeps its refusal"
        raise refusals[-1].error


def call_entry(
    registry: SnapshotRegistry, entry: str, instance: Any, metadata: Any
) -> Any:
    """``add_snapshot`` or ``register_snapshot`` by name; both raise refusals."""
    if entry == "add_snapshot":
        return registry.add_snapshot(instance, metadata)
    assert entry == "register_snapshot", entry
    return register_or_raise(registry, instance, metadata)
