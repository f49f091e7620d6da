"""``muscle_manager`` with snapreg swapped in by name, as a MUSCLE3 developer would.

Usage: ``python rebound_manager.py MUSCLE_MANAGER_ARGUMENTS...``

The one name ``SnapshotRegistry`` in ``libmuscle.manager.manager`` is rebound to
:class:`snapreg.SnapshotRegistry` and nothing else changes: the manager builds
the registry itself, as ``SnapshotRegistry(configuration, snapshot_folder,
topology_store)``, with no database URL, and ends it with ``shutdown()`` and
``join()``.
"""

from __future__ import annotations

import libmuscle.manager.manager
from muscle3.muscle_manager import manage_simulation

import snapreg

if __name__ == "__main__":
    libmuscle.manager.manager.SnapshotRegistry = snapreg.SnapshotRegistry
    manage_simulation()
