"""The snapshot registry: the service layer, and the only part of snapreg that writes.

A :class:`SnapshotRegistry` is opened on a database URL and a campaign. It continues
the campaign's latest run exactly where it stopped, or starts a new run with fresh
restart nodes. Each registration is one transaction: the node, its edges, any
workflow snapshots it completes with their members, and the retirement of nodes that
those workflow snapshots made obsolete. Workflow snapshot files are written after the
commit.

Two entry points, as in MUSCLE3:

* :meth:`SnapshotRegistry.add_snapshot` processes a registration synchronously and
  returns the workflow snapshots it completed.
* :meth:`SnapshotRegistry.register_snapshot` is MUSCLE3's threaded entry point:
  registrations that arrive from several threads at once share one transaction
  (group commit), which stores each as a ``submission`` row and processes it; it
  returns once that has committed. Should processing fail for a reason other than
  the database's availability, the submissions are committed alone and processed
  when the run is opened again, in order. The worker thread renews the writer
  lease while no registrations come.

Only one registry may write a run at a time; the right to write is a lease on the
``run`` row (holder's host, pid, token and heartbeat), held on PostgreSQL by the
writer's own database session, and taken over only when the holder is gone (see
:mod:`snapreg.registry.lease`). The first statement of every write transaction
checks that the lease is still this registry's, so one that was taken over writes
nothing.

This module is the facade; the work is done by the other modules of the package:
:mod:`~snapreg.registry.group_commit` orders the registering threads,
:mod:`~snapreg.registry.batch_writer` turns registrations into rows,
:mod:`~snapreg.registry.files` writes workflow snapshot files,
:mod:`~snapreg.registry.store` holds the database and the lease, and
:mod:`~snapreg.registry.runs` opens the run.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ymmsl
from sqlalchemy.engine import URL

from snapreg.errors import (
    RegistryClosedError,
    UnwrittenFilesError,
    WorkerError,
    WriterConflictError,
)
from snapreg.registry.batch_writer import BatchWriter
from snapreg.registry.files import FileWriter, remove_temporary_files
from snapreg.registry.lease import (
    DEFAULT_WRITER_TIMEOUT,
    SYSTEM_CLOCK,
    Clock,
    WriterLease,
)
from snapreg.registry.publishing import publish, recover_missing_files
from snapreg.registry.registrations import Refusal, Registrations
from snapreg.registry.runs import RunSetup, check_arguments
from snapreg.registry.store import RunStore
from snapreg.rules.graph import Policy
from snapreg.rules.metadata import CountRules, coerce_metadata
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import PeerSource, Topology
from snapreg.storage import queries
from snapreg.storage.engines import (
    Durability,
    default_database_url,
    describe_url,
    normalize_url,
)
from snapreg.storage.transactions import host_and_pid

_logger = logging.getLogger(__name__)


class SnapshotRegistry(threading.Thread):
    """Registry of all snapshots taken by instances, persisted in a database.

    A drop-in replacement for ``libmuscle.manager.snapshot_registry.
    SnapshotRegistry``: same constructor arguments first, same threaded
    ``register_snapshot`` / ``start`` / ``shutdown`` / ``join``, same workflow
    snapshot files.
    """

    def __init__(
        self,
        config: Any,
        snapshot_folder: Path | str | None,
        topology_store: PeerSource | None = None,
        *,
        database_url: str | URL | None = None,
        campaign: str | None = None,
        new_run: bool = False,
        resumed_from: int | None = None,
        durability: Durability = "normal",
        upgrade: bool = False,
        writer_timeout: float = DEFAULT_WRITER_TIMEOUT,
        policy: Policy = "all",
        clock: Clock = SYSTEM_CLOCK,
        on_workflow_snapshots: Callable[[], None] | None = None,
    ) -> None:
        """Open (or create) a campaign's run in a database.

        Args:
            config: The simulation's configuration: a ``ymmsl.v0_2.Configuration``
                or a ``ymmsl.v0_1`` ``PartialConfiguration``/``Configuration``.
            snapshot_folder: Where workflow snapshot files go; None writes none.
            topology_store: Optional source of peers (MUSCLE3's TopologyStore).
            database_url: SQLAlchemy URL. Default: ``$SNAPREG_DATABASE_URL``,
                else ``snapreg.sqlite`` beside the snapshot folder (in the folder
                that holds it: for MUSCLE3, the run directory), or an in-memory
                database without a folder. Never inside the snapshot folder.
            campaign: Campaign name; default: the model's name.
            new_run: Start a new run even if the campaign has one to continue.
            resumed_from: Id of the workflow snapshot a new run resumes from.
            durability: ``"normal"`` or ``"full"`` (SQLite: survive power loss).
            upgrade: Upgrade an older schema instead of refusing it.
            writer_timeout: SQLite: seconds without a heartbeat (by the
                database's clock) after which another process's right to write
                the run may be taken over. (PostgreSQL: as long as its database
                session lives, however silent.) The worker renews the heartbeat
                every quarter of it, at most every 15 s.
            policy: Which workflow snapshots to materialise: ``"all"`` that
                contain the new node (MUSCLE3's behaviour; their number can grow
                exponentially with the instances that have several candidates), or
                only the newest one, ``"latest"``.
            clock: Where the lease reads the time (see
                :class:`~snapreg.registry.lease.Clock`); tests pass one they
                advance.
            on_workflow_snapshots: Called after every commit that added
                workflow snapshots, once their files are written (or wait to
                be; see :attr:`unwritten_workflow_snapshot_files`). It runs in
                the registering thread, which waits for it, so it must return at
                once: setting a ``threading.Event`` is the intended use (``snapreg
                manage --keep`` wakes its retention worker so). What it raises
                is logged and otherwise ignored.

        Raises:
            ConfigurationError: unusable configuration or arguments.
            TopologyMismatchError: continuing a run with a different model.
            SchemaVersionError: the database schema does not match the code.
            StorageUnavailableError: the database cannot be opened.
            WriterConflictError: another live registry writes this run.
        """
        # A daemon: every acknowledged registration is committed before
        # register_snapshot returns, so a process that exits without shutdown()
        # loses nothing (the rest is processed when the run is next opened), and
        # a forgotten registry can never keep the interpreter from exiting.
        super().__init__(name="SnapshotRegistry", daemon=True)
        check_arguments(
            snapshot_folder,
            topology_store,
            database_url=database_url,
            campaign=campaign,
            new_run=new_run,
            resumed_from=resumed_from,
            upgrade=upgrade,
            writer_timeout=writer_timeout,
            policy=policy,
        )
        self._topology = Topology.from_configuration(config, topology_store)
        count_rules = CountRules.from_configuration(config, self._topology)
        folder = None if snapshot_folder is None else Path(snapshot_folder)
        # The snapshot folder holds workflow snapshot files and nothing else, as
        # MUSCLE3's does: users' scripts and MUSCLE3's tests read every entry.
        url = normalize_url(
            default_database_url(None if folder is None else folder.resolve().parent)
            if database_url is None
            else database_url
        )
        host, pid = host_and_pid()
        lease = WriterLease(host, pid, secrets.token_hex(16), writer_timeout, clock)
        self._store = RunStore(url, durability=durability, lease=lease, clock=clock)
        self._lock = self._store.lock
        self._closing = threading.Lock()
        self._closed = False
        self._files = FileWriter(
            sync=durability == "full",
            ymmsl_version="v0.2" if hasattr(config, "root_model") else "v0.1",
        )
        try:
            setup = RunSetup(
                campaign or self._topology.model_name,
                self._topology,
                _configuration_text(config),
                folder,
                lease,
                policy,
            )
            self._run, created = self._store.open(
                setup, upgrade=upgrade, new_run=new_run, resumed_from=resumed_from
            )
            writer = BatchWriter(
                self._store,
                self._topology,
                policy,
                self._files,
                folder,
                on_workflow_snapshots,
            )
            self._writer = writer
            self._registrations = Registrations(writer, self._lock, count_rules)
            if folder is not None:
                remove_temporary_files(folder)
            recover_missing_files(self._store, self._files)
            if created is None:
                self._registrations.resume(self._store)
            else:
                self._registrations.start(created)
        except BaseException:
            if self._store.run is not None:
                try:
                    self._store.release()
                except Exception:  # the original error matters more
                    _logger.warning("Could not release the writer lease", exc_info=True)
            self._store.close(keep_memory=False)
            raise

    # ------------------------------------------------------------------ public API

    @property
    def campaign(self) -> str:
        """Name of the campaign this registry writes."""
        return self._run.campaign

    @property
    def run_number(self) -> int:
        """Number of the run within the campaign (1 for the first)."""
        return self._run.number

    @property
    def run_id(self) -> int:
        """Row id of the run."""
        return self._run.run_id

    @property
    def database_url(self) -> str:
        """The database URL, password hidden."""
        return describe_url(self._store.url)

    @property
    def topology(self) -> Topology:
        """The model's components and conduits."""
        return self._topology

    def add_snapshot(self, instance: Any, snapshot: Any) -> list[WorkflowSnapshot]:
        """Register a snapshot and process it now, in one committed transaction.

        Registrations stored unprocessed (see :meth:`register_snapshot`) are
        processed first, so the order of registrations is kept.

        Args:
            instance: The instance that created the snapshot (Reference or str).
            snapshot: Its metadata.

        Returns:
            The workflow snapshots this registration completed.

        Raises:
            InvalidInputError: bad instance or metadata; nothing was written.
        """
        self._check_open()
        name = self._topology.check_instance(instance)
        metadata = coerce_metadata(snapshot)
        return publish(self._run, self._registrations.add(name, metadata))

    def register_snapshot(self, instance: Any, snapshot: Any) -> bool:
        """Register a new snapshot; stored and processed when this returns True.

        MUSCLE3's threaded entry point, called from the manager's request
        handlers. Like MUSCLE3's own, it never raises: an exception here would end
        the handler's thread without an answer, and the instance would wait for
        ever. A registration that snapreg refuses or cannot store is logged as one
        error line, kept in :attr:`refusals`, and answered with False; the run goes
        on without that snapshot. Use :meth:`add_snapshot` to have the error
        raised instead.

        Registrations from threads that call at the same time share one
        transaction (group commit), which stores and processes them all.

        Args:
            instance: The instance that created the snapshot.
            snapshot: Metadata describing the snapshot.

        Returns:
            True once the registration is durable and processed; False if it was
            refused (bad instance or metadata: nothing was written), could not be
            committed (the database stayed unavailable), or this registry cannot
            write any more (closed, taken over, or failed earlier: what it
            acknowledged is processed when the run is next opened).
        """
        try:
            self._check_open()
            self._refuse_if_failed()
            name = self._topology.check_instance(instance)
            self._registrations.register(name, coerce_metadata(snapshot))
        except Exception as err:  # every failure is answered; see the docstring
            self._registrations.refuse(instance, err)
            return False
        return True

    @property
    def refusals(self) -> list[Refusal]:
        """The registrations :meth:`register_snapshot` refused, oldest first."""
        return self._registrations.refusals

    def snapshots(self, instance: Any) -> list[SnapshotNode]:
        """The instance's active nodes in this run, ascending num, with their edges."""
        return self._nodes(instance, active_only=True)

    def history(self, instance: Any) -> list[SnapshotNode]:
        """Every node of the instance in this run, retired ones too, with all edges."""
        return self._nodes(instance, active_only=False)

    def workflow_snapshots(self) -> list[WorkflowSnapshot]:
        """Every workflow snapshot of the campaign, all runs, oldest first."""
        return self._store.read(
            lambda session: queries.workflow_snapshots(
                session, self._run.campaign_id, self._run.campaign, self._topology
            )
        )

    @property
    def unwritten_workflow_snapshot_files(self) -> frozenset[Path]:
        """Workflow snapshot files whose rows may have committed, not written yet.

        The files of the transaction under way (from just before it commits until
        each is written) and those waiting to be tried again (a full or read-only
        folder). Absolute, as the rows record them. Safe to read from any thread:
        a workflow snapshot that a reader sees committed and whose file is not
        written yet is in the set read after it.
        """
        return self._files.unwritten

    def pending_count(self) -> int:
        """How many acknowledged submissions still wait for processing."""
        return self._registrations.pending_count

    def run(self) -> None:
        """The worker thread: keep the writer lease while no registrations come.

        Registrations are processed in the transaction that acknowledges them
        (see :meth:`register_snapshot`), and renew the lease when it is due. The
        worker renews it in between; a database that is unavailable for a while
        is waited out.
        """
        try:
            self._store.keep_lease()
        except BaseException as err:
            _logger.exception("The snapshot registry worker stopped on an error")
            self._registrations.error = err

    def shutdown(self) -> None:
        """Stop the worker thread (every acknowledged registration is processed).

        MUSCLE3's manager ends a registry with ``shutdown()`` and ``join()``: the
        join then finishes the run as :meth:`close` does.

        It never raises, so that MUSCLE3's manager goes on to ``join()``, which
        ends the run and raises what went wrong.
        """
        self._store.stop_keeping()
        refused = len(self._registrations.refusals)
        if refused:
            _logger.warning(
                "snapreg did not register %d snapshot(s) of this run; the errors"
                " were logged when they happened",
                refused,
            )

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to finish; after :meth:`shutdown`, end the run.

        Once the worker has stopped after a shutdown, the run is finished as
        :meth:`close` finishes it: files that could not be written are tried once
        more, the right to write is given up (the run reads as ended), SQLite's
        write-ahead log is folded back into the database file, and the database
        is released.

        Raises:
            WorkerError: the worker stopped on an error (its cause attached).
            UnwrittenFilesError: workflow snapshot files that still could not be
                written when the run ended (their rows are in the database).
        """
        if self.is_alive() or self.ident is not None:
            super().join(timeout)
        if self._store.stopping and not self.is_alive():
            self._finish()
        self._raise_worker_error()
        if self._closed:
            self._raise_unwritten()

    def close(self) -> None:
        """Finish pending work, give up the right to write, release the database.

        A no-op on a registry already closed, or ended by ``shutdown`` and
        ``join``.

        Raises:
            WorkerError: if the worker failed (the database is released anyway).
            UnwrittenFilesError: workflow snapshot files that could not be
                written (their rows are in the database).
        """
        if self._closed:
            return
        try:
            self.shutdown()
            self.join()
        finally:
            self._finish()

    def __enter__(self) -> SnapshotRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing

    def _nodes(self, instance: Any, *, active_only: bool) -> list[SnapshotNode]:
        name = self._topology.check_instance(instance)
        return self._store.read(
            lambda session: queries.nodes_with_edges(
                session,
                self._run.run_id,
                name,
                self._topology,
                self._run.number,
                active_only=active_only,
            )
        )

    def _finish(self) -> None:
        """End the run, once."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self._store.finish(self._files)

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError("this snapshot registry is closed")

    def _refuse_if_failed(self) -> None:
        """Refuse new registrations once the registry cannot go on."""
        error = self._registrations.error
        if isinstance(error, WriterConflictError):
            raise WriterConflictError(str(error)) from error
        self._raise_worker_error()

    def _raise_unwritten(self) -> None:
        waiting = self._files.waiting
        if waiting:
            raise UnwrittenFilesError(
                f"{len(waiting)} workflow snapshot file(s) could not be written, the"
                f" first {waiting[0]}; their rows are in the database, and the files"
                " are written when the run is opened again with room in the folder"
            )

    def _raise_worker_error(self) -> None:
        error = self._registrations.error
        if error is not None:
            raise WorkerError(
                f"the snapshot registry worker failed: {error}"
            ) from error


def _configuration_text(config: Any) -> str:
    try:
        return str(ymmsl.dump(config))
    except Exception:  # a partial or hand-made configuration: keep what we can
        return repr(config)
