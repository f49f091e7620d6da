"""snapreg: a persistent, database-backed snapshot registry for MUSCLE3.

Import the registry with a database URL and use it where MUSCLE3 uses its in-memory
``SnapshotRegistry``::

    from snapreg import SnapshotRegistry
    registry = SnapshotRegistry(config, snapshot_folder, database_url="sqlite:///x.db")
"""

from snapreg.errors import (
    ConfigurationError,
    DatabaseRefusedError,
    ForeignDatabaseError,
    InvalidInputError,
    InvalidMetadataError,
    NotFoundError,
    RegistryClosedError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    SchemaVersionError,
    SnapregError,
    StorageFullError,
    StorageUnavailableError,
    TopologyMismatchError,
    TransientDatabaseError,
    UnknownInstanceError,
    UnwrittenFilesError,
    WorkerError,
    WriterConflictError,
)
from snapreg.registry.registrations import Refusal
from snapreg.registry.snapshot_registry import SnapshotRegistry
from snapreg.rules.consistency import (
    Connection,
    ConnectionInfo,
    calc_consistency,
    calc_consistency_list,
    safe_get,
)
from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import Topology, TopologyStore
from snapreg.storage.versions import upgrade_database

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "Connection",
    "ConnectionInfo",
    "DatabaseRefusedError",
    "ForeignDatabaseError",
    "InvalidInputError",
    "InvalidMetadataError",
    "NotFoundError",
    "Refusal",
    "RegistryClosedError",
    "SchemaOutOfDateError",
    "SchemaTooNewError",
    "SchemaVersionError",
    "SnapregError",
    "SnapshotMetadata",
    "SnapshotNode",
    "SnapshotRegistry",
    "StorageFullError",
    "StorageUnavailableError",
    "Topology",
    "TopologyMismatchError",
    "TopologyStore",
    "TransientDatabaseError",
    "UnknownInstanceError",
    "UnwrittenFilesError",
    "WorkerError",
    "WorkflowSnapshot",
    "WriterConflictError",
    "calc_consistency",
    "calc_consistency_list",
    "safe_get",
    "upgrade_database",
]
