"""The exceptions snapreg raises.

Every error snapreg raises on purpose is a :class:`SnapregError`, so that a caller can
tell snapreg's own refusals from bugs. Bad input (:class:`InvalidInputError` and its
children) always leaves the database exactly as it was; transient database trouble
(:class:`TransientDatabaseError`) is a different kind of failure and never reported as
bad input.
"""


class SnapregError(Exception):
    """Base class of every error snapreg raises on purpose."""


class InvalidInputError(SnapregError, ValueError):
    """The caller passed something snapreg refuses; nothing was written."""


class UnknownInstanceError(InvalidInputError):
    """An instance that the model does not have."""


class InvalidMetadataError(InvalidInputError):
    """Snapshot metadata that is malformed or contradicts earlier snapshots."""


class ConfigurationError(InvalidInputError):
    """A configuration snapreg cannot work with."""


class TopologyMismatchError(ConfigurationError):
    """Continuing a run with a model whose components or conduits differ."""


class NotFoundError(SnapregError, LookupError):
    """A campaign, run or workflow snapshot that does not exist."""


class SchemaVersionError(SnapregError):
    """The database schema does not match this version of snapreg."""


class SchemaOutOfDateError(SchemaVersionError):
    """The database schema is older than the code; it needs an upgrade."""


class SchemaTooNewError(SchemaVersionError):
    """The database was written by a newer snapreg than this one."""


class StorageUnavailableError(SnapregError):
    """The database cannot be reached or opened."""


class StorageFullError(StorageUnavailableError):
    """The disk that holds the database is full; nothing of the transaction was kept."""


class DatabaseRefusedError(SnapregError):
    """The database refused a transaction for a reason that is not snapreg's input.

    A constraint or a trigger of the server's, or a damaged database; the
    original error is attached as the cause. Nothing of the transaction was kept.
    """


class TransientDatabaseError(StorageUnavailableError):
    """A lock, serialization failure or lost connection outlasted the retries."""


class WriterConflictError(SnapregError):
    """Another registry holds the right to write this run."""


class NotResumableError(SnapregError):
    """A workflow snapshot that cannot be resumed from, or no campaign one that can.

    A member's snapshot file is missing (or was deleted by ``snapreg gc``), or is not
    the size recorded when it was registered: MUSCLE3 would fail when the
    instances start.
    """


class RegistryClosedError(SnapregError):
    """The registry was closed or its worker stopped; it takes no more work."""


class UnwrittenFilesError(SnapregError):
    """Workflow snapshot files that could not be written by the end of the run.

    Their rows are in the database: a registry that opens the run again writes
    them, once the folder can take them.
    """


class WorkerError(SnapregError):
    """The worker thread failed; raised to the caller at ``shutdown``/``join``."""


class ForeignDatabaseError(ConfigurationError):
    """A database that holds another application's tables, not snapreg's schema.

    snapreg refuses it and leaves it exactly as it was: it creates no table in
    it and changes none of its settings.
    """
