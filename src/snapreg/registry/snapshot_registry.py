"""The snapshot registry: the service layer, and the only part of snapreg that writes.

A :class:`SnapshotRegistry` is opened on a database URL and a campaign. It continues
the campaign's latest run exactly where it stopped, or starts a new run with fresh
restart nodes. Each registration is one transaction: the node, its edges, any
workflow snapshots it completes with their members, and the retirement of nodes that
those workflow snapshots made obsolete. Workflow snapshot files are written after the
commit (see :mod:`snapreg.materialize`).

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
:mod:`snapreg.registry.runs`). The first statement of every write transaction
checks that the lease is still this registry's, so one that was taken over writes
nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import ymmsl
from sqlalchemy import Connection, Table, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from snapreg.errors import (
    ConfigurationError,
    DatabaseRefusedError,
    RegistryClosedError,
    SnapregError,
    StorageUnavailableError,
    UnwrittenFilesError,
    WorkerError,
    WriterConflictError,
)
from snapreg.registry.files import (
    FileWriter,
    NameAllocator,
    remove_temporary_files,
)
from snapreg.registry.group_commit import GroupCommit, Staged
from snapreg.registry.runs import (
    DEFAULT_WRITER_TIMEOUT,
    RunSetup,
    WriterLease,
    check_arguments,
    open_run_on,
)
from snapreg.rules.graph import POLICIES, ActiveGraph, GraphNode, Policy
from snapreg.rules.instances import instance_sort_key
from snapreg.rules.metadata import (
    CountRules,
    SnapshotMetadata,
    check_counts,
    coerce_metadata,
)
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.rules.topology import PeerSource, Topology
from snapreg.rules.workflow_file import Member, describe, render, resume_mapping
from snapreg.storage import codecs, queries, schema, statements
from snapreg.storage.engines import (
    Durability,
    create_database_engine,
    default_database_url,
    describe_url,
    is_memory_sqlite,
    normalize_url,
    writer,
)
from snapreg.storage.transactions import (
    HeldConnection,
    host_and_pid,
    run_in_connection,
    run_transaction,
)
from snapreg.storage.versions import ensure_schema

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000
# Submissions stored unprocessed (a crash, a failed processing) are processed this
# many per transaction when the run is opened again.
_PROCESSING_BATCH = 64
# The worker's pauses between attempts while the database is unavailable.
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class Refusal:
    """A registration that :meth:`SnapshotRegistry.register_snapshot` did not store.

    Attributes:
        instance: The instance that sent it.
        error: Why: a :class:`~snapreg.errors.SnapregError` for what snapreg
            refuses or cannot store, anything else for a bug.
    """

    instance: str
    error: Exception


@dataclass
class _Pending:
    """An acknowledged submission waiting for the worker."""

    submission_id: int
    instance: str
    metadata: SnapshotMetadata


@dataclass
class _Found:
    """A workflow snapshot found by one registration, before and after commit."""

    nodes: list[GraphNode]
    path: Path | None
    description: str
    resume: dict[str, str]
    id: int = 0


@dataclass
class _Batch:
    """The rows a batch of registrations will write, gathered before writing."""

    nodes: list[tuple[GraphNode, int | Staged | None]] = field(default_factory=list)
    #: registrations whose submission rows commit with the batch
    staged: list[Staged] = field(default_factory=list)
    edges: list[tuple[GraphNode, GraphNode]] = field(default_factory=list)
    workflow_snapshots: list[_Found] = field(default_factory=list)
    retired: list[GraphNode] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)


@dataclass
class _Outcome:
    """What one processed registration produced, applied to memory after commit."""

    node: GraphNode
    found: list[_Found] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


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
        )
        self._topology = Topology.from_configuration(config, topology_store)
        self._count_rules = CountRules.from_configuration(config, self._topology)
        self._ymmsl_version = "v0.2" if hasattr(config, "root_model") else "v0.1"
        self._configuration_text = _configuration_text(config)
        self._folder = None if snapshot_folder is None else Path(snapshot_folder)
        if self._folder is not None and not self._folder.is_dir():
            raise ConfigurationError(f"snapshot folder {self._folder} does not exist")
        if policy not in POLICIES:
            raise ConfigurationError(
                f"policy must be one of {', '.join(POLICIES)}, not {policy!r}"
            )
        self._policy: Policy = policy
        # The snapshot folder holds workflow snapshot files and nothing else, as
        # MUSCLE3's does: users' scripts and MUSCLE3's tests read every entry.
        url = normalize_url(
            default_database_url(
                None if self._folder is None else self._folder.resolve().parent
            )
            if database_url is None
            else database_url
        )
        self._url = url
        self._durability: Durability = durability
        self._engine = create_database_engine(url, durability=durability)
        self._write_engine = writer(self._engine)
        # the registration path's transactions, one at a time (under self._lock)
        # on PostgreSQL its session holds the run's writer lock (see runs.py)
        self._writes = HeldConnection(
            self._write_engine, session_locks=url.get_backend_name() == "postgresql"
        )
        self._in_memory = is_memory_sqlite(url)
        self._campaign_name = campaign or self._topology.model_name
        self._heartbeat_interval = min(writer_timeout / 4, 15.0)
        host, pid = host_and_pid()
        self._lease = WriterLease(host, pid, secrets.token_hex(16), writer_timeout)
        self._allocator = NameAllocator(self._folder) if self._folder else None

        # Guards the graph and the processing of registrations.
        self._lock = threading.RLock()
        # In memory, every thread shares one connection: writes (acknowledgements
        # included) take the graph's lock. Elsewhere the database orders writers
        # itself (a Python lock here was measured slower on SQLite too).
        self._write_lock: AbstractContextManager[Any] = (
            self._lock if self._in_memory else nullcontext()
        )
        # Guards what register_snapshot stages and what the worker takes.
        self._queue_mutex = threading.Lock()
        self._queue_lock = threading.Condition(self._queue_mutex)
        self._group_commit = GroupCommit(
            self._queue_mutex, self._commit_staged, self._forget_counts
        )
        self._pending: deque[_Pending] = deque()
        self._last_counts: dict[str, dict[str, list[int]]] = {}
        self._stopping = False
        self._closed = False
        self._error: BaseException | None = None
        self._files = FileWriter(sync=durability == "full")
        self._refusals: list[Refusal] = []
        # True while the in-memory graph may hold rows that never committed
        self._graph_stale = False
        self._last_heartbeat = 0.0

        try:
            ensure_schema(self._engine, upgrade=upgrade)
            setup = RunSetup(
                self._campaign_name,
                self._topology,
                self._configuration_text,
                self._folder,
                self._lease,
            )
            self._campaign_id, self._run_id, self._run_number = run_in_connection(
                self._writes,
                lambda connection: open_run_on(
                    connection, setup, new_run, resumed_from
                ),
            )
            # every write transaction checks that the run is still ours
            self._writer = statements.RunWriter(
                self._run_id, self._lease.token, self._run_description()
            )
            self._writes.on_reconnect = lambda connection: self._lease.hold(
                connection, self._run_id, self._run_description()
            )
            self._last_heartbeat = _monotonic()
            self._graph = self._load_state()
            if self._folder is not None:
                remove_temporary_files(self._folder)
            self._recover_missing_files()
            # Acknowledged before a crash, never processed: process them now, in order.
            with self._lock:
                self._drain_pending()
        except BaseException:
            if hasattr(self, "_run_id"):
                try:
                    run_transaction(
                        self._write_engine,
                        lambda session: self._lease.release(session, self._run_id),
                    )
                except Exception:  # the original error matters more
                    _logger.warning("Could not release the writer lease", exc_info=True)
            self._writes.close()
            self._engine.dispose()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def campaign(self) -> str:
        """Name of the campaign this registry writes."""
        return self._campaign_name

    @property
    def run_number(self) -> int:
        """Number of the run within the campaign (1 for the first)."""
        return self._run_number

    @property
    def run_id(self) -> int:
        """Row id of the run."""
        return self._run_id

    @property
    def database_url(self) -> str:
        """The database URL, password hidden."""
        return describe_url(self._url)

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
        with self._lock:
            self._drain_pending()
            with self._queue_lock:
                check_counts(
                    name, self._last_counts.get(name, {}), metadata, self._count_rules
                )
            (outcome,) = self._process([(name, metadata, None)])
            with self._queue_lock:
                self._last_counts[name] = metadata.port_message_counts
            return self._publish(outcome)

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
            self._register_durably(instance, snapshot)
        except Exception as err:  # every failure is answered; see the docstring
            self._refuse(instance, err)
            return False
        return True

    @property
    def refusals(self) -> list[Refusal]:
        """The registrations :meth:`register_snapshot` refused, oldest first."""
        with self._queue_lock:
            return list(self._refusals)

    def _refuse(self, instance: Any, err: Exception) -> None:
        """Log and keep a registration that register_snapshot did not store."""
        with self._queue_lock:
            self._refusals.append(Refusal(str(instance), err))
        _logger.error(
            "snapreg did not register the snapshot of %s (%s: %s); the run goes on"
            " without it",
            instance,
            type(err).__name__,
            err,
            # a failure that is not one of snapreg's refusals is a bug: keep its trace
            exc_info=err if not isinstance(err, SnapregError) else None,
        )

    def _register_durably(self, instance: Any, snapshot: Any) -> None:
        """Stage a registration and wait for the commit that stores it."""
        self._check_open()
        self._refuse_if_failed()
        name = self._topology.check_instance(instance)
        metadata = coerce_metadata(snapshot)
        with self._queue_lock:
            previous = self._last_counts.get(name)
            check_counts(name, previous or {}, metadata, self._count_rules)
            staged = Staged(
                name, metadata, previous, self._group_commit.wakeup_of_this_thread()
            )
            self._last_counts[name] = metadata.port_message_counts
            self._group_commit.wait_for_commit(staged)
        if staged.error is not None:
            raise staged.error

    def snapshots(self, instance: Any) -> list[SnapshotNode]:
        """The instance's active nodes in this run, ascending num, with their edges."""
        return self._nodes(instance, active_only=True)

    def history(self, instance: Any) -> list[SnapshotNode]:
        """Every node of the instance in this run, retired ones too, with all edges."""
        return self._nodes(instance, active_only=False)

    def _nodes(self, instance: Any, *, active_only: bool) -> list[SnapshotNode]:
        name = self._topology.check_instance(instance)
        return self._read(
            lambda session: queries.nodes_with_edges(
                session,
                self._run_id,
                name,
                self._topology,
                self._run_number,
                active_only=active_only,
            )
        )

    def workflow_snapshots(self) -> list[WorkflowSnapshot]:
        """Every workflow snapshot of the campaign, all runs, oldest first."""
        return self._read(
            lambda session: queries.workflow_snapshots(
                session, self._campaign_id, self._campaign_name, self._topology
            )
        )

    def pending_count(self) -> int:
        """How many acknowledged submissions still wait for processing."""
        with self._queue_lock:
            return len(self._pending)

    def run(self) -> None:
        """The worker thread: keep the writer lease while no registrations come.

        Registrations are processed in the transaction that acknowledges them
        (see :meth:`register_snapshot`), and renew the lease when it is due. The
        worker renews it in between; a database that is unavailable for a while
        is waited out, with growing pauses between attempts.
        """
        backoff = 0.0
        try:
            while True:
                with self._queue_lock:
                    if not self._stopping:
                        due = self._last_heartbeat + self._heartbeat_interval
                        self._queue_lock.wait(
                            timeout=backoff or max(due - _monotonic(), 0.0)
                        )
                    if self._stopping:
                        return
                try:
                    with self._lock:
                        self._heartbeat_if_due(force=bool(backoff))
                    backoff = 0.0
                except StorageUnavailableError as err:  # a lock, a full disk: wait
                    backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)
                    _logger.warning(
                        "Could not renew the writer lease; retrying in %.1f s: %s",
                        backoff,
                        err,
                    )
        except BaseException as err:
            _logger.exception("The snapshot registry worker stopped on an error")
            self._error = err

    def shutdown(self) -> None:
        """Stop the worker thread (every acknowledged registration is processed).

        MUSCLE3's manager ends a registry with ``shutdown()`` and ``join()``: the
        join then finishes the run as :meth:`close` does.

        It never raises, so that MUSCLE3's manager goes on to ``join()``, which
        ends the run and raises what went wrong.
        """
        with self._queue_lock:
            self._stopping = True
            self._queue_lock.notify_all()
            refused = len(self._refusals)
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
        if self._stopping and not self.is_alive():
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

    def _finish(self) -> None:
        """End the run: last file writes, lease released, database let go. Once."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
        try:
            with self._lock:
                self._files.retry()
                run_transaction(
                    self._write_engine,
                    lambda session: self._lease.release(session, self._run_id),
                )
        except Exception:  # release is best effort; the lease times out anyway
            _logger.warning("Could not release the run's writer lease", exc_info=True)
        with self._lock:
            self._checkpoint()
            self._writes.close()
        if not self._in_memory:  # an in-memory database lives as long as its engine
            self._engine.dispose()

    def _checkpoint(self) -> None:
        """Fold SQLite's write-ahead log back into the database file."""
        if self._url.get_backend_name() != "sqlite" or self._in_memory:
            return
        try:
            with self._engine.connect() as connection:
                # outside any transaction: the driver's own connection, as SQLAlchemy
                # would begin one first
                driver = connection.connection.driver_connection
                assert driver is not None
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # a reader may hold the log; it is folded back later
            _logger.debug("Could not checkpoint the write-ahead log", exc_info=True)

    def __enter__(self) -> SnapshotRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ opening a run

    def _load_state(self) -> ActiveGraph:
        """Load the active graph, pending submissions and latest counts."""

        def load(session: Session) -> ActiveGraph:
            graph = self._load_graph(session)
            pending = [
                _Pending(
                    row.id,
                    row.instance,
                    codecs.metadata_from_json(row.snapshot_metadata),
                )
                for row in queries.pending_submissions(session, self._run_id)
            ]
            with self._queue_lock:
                self._last_counts = {
                    instance: nodes[-1].metadata.port_message_counts
                    for instance, nodes in graph.nodes.items()
                    if nodes and not nodes[-1].is_restart
                }
                for item in pending:
                    self._last_counts[item.instance] = item.metadata.port_message_counts
                self._pending = deque(pending)
            return graph

        graph = run_transaction(self._engine, load)
        if self._pending:
            _logger.info(
                "Run %d of campaign %r has %d acknowledged submissions to process",
                self._run_number,
                self._campaign_name,
                len(self._pending),
            )
        return graph

    def _load_graph(self, session: Session) -> ActiveGraph:
        node_rows, edge_rows = queries.active_graph_rows(session, self._run_id)
        graph = ActiveGraph(self._topology)
        graph.load(
            (
                GraphNode(
                    row.id,
                    row.instance,
                    row.num,
                    codecs.metadata_from_row(row),
                    row.is_restart,
                    self._topology.peers(row.instance),
                )
                for row in node_rows
                if row.instance in self._topology.instance_set
            ),
            edge_rows,
        )
        return graph

    def _recover_missing_files(self) -> None:
        """Write the file of every workflow snapshot row that lacks it."""

        def missing(session: Session) -> list[WorkflowSnapshot]:
            rows = session.execute(
                select(schema.WorkflowSnapshotRow.id, schema.WorkflowSnapshotRow.path)
                .join(
                    schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id
                )
                .where(schema.RunRow.campaign_id == self._campaign_id)
            ).all()
            lost = [
                row.id
                for row in rows
                if not os.path.exists(row.path)
                and os.path.isdir(os.path.dirname(row.path))
            ]
            if not lost:
                return []
            found: list[WorkflowSnapshot] = []
            for chunk in queries.chunks(lost, _IN_LIST_CHUNK):
                found.extend(
                    queries.workflow_snapshots(
                        session, self._campaign_id, self._campaign_name, ids=chunk
                    )
                )
            return found

        for snapshot in self._read(missing):
            assert snapshot.path is not None
            _logger.warning(
                "Rewriting missing workflow snapshot file %s", snapshot.path
            )
            self._files.write(
                snapshot.path,
                render(
                    snapshot.resume_files,
                    snapshot.description,
                    ymmsl_version=self._ymmsl_version,
                ),
            )

    # ------------------------------------------------------------- registration

    def _commit_staged(self, batch: list[Staged]) -> None:
        """Store and process staged registrations in one transaction (group commit).

        Should processing fail for a reason other than the database, their
        submissions are committed alone, to be processed when the run is opened
        again.
        """
        with self._lock:
            if not self._process_staged(batch):
                self._queue_staged(batch)

    def _forget_counts(self, batch: list[Staged], error: BaseException) -> None:
        """Undo what a failed batch's registrations set as their latest counts."""
        for item in batch:
            if self._last_counts.get(item.instance) is (
                item.metadata.port_message_counts
            ):
                if item.previous_counts is None:
                    del self._last_counts[item.instance]
                else:
                    self._last_counts[item.instance] = item.previous_counts

    def _process_staged(self, batch: list[Staged]) -> bool:
        """Process staged registrations with their submissions, in one transaction.

        Nothing older waits: submissions are only ever stored unprocessed once
        processing has failed for good, and then this is not tried any more.

        Returns:
            False if they were not processed (nothing of them was written)
            because processing failed for a reason other than the database's
            availability: they are then to be stored unprocessed.

        Raises:
            TransientDatabaseError: the database stayed unavailable through every
                retry; nothing of them was written.
        """
        if self._error is not None:
            return False
        try:
            self._process(
                [(item.instance, item.metadata, item) for item in batch], staged=batch
            )
        except (
            StorageUnavailableError,
            DatabaseRefusedError,
            DBAPIError,
            sqlite3.Error,
        ):
            raise  # the database's answer, for the caller; nothing was written
        except WriterConflictError as err:
            self._error = err  # this registry must not write the run any more
            raise
        except Exception as err:
            _logger.error(
                "Processing registrations failed; later ones are refused, and what"
                " was acknowledged is processed when the run is opened again",
                exc_info=err,
            )
            self._error = err
            return False
        return True

    def _queue_staged(self, batch: list[Staged]) -> None:
        """Commit only the submissions of staged registrations, left unprocessed."""
        now = datetime.now(timezone.utc)

        def work(connection: Connection) -> Sequence[int]:
            self._heartbeat_if_due(connection)
            self._insert_submissions(
                connection,
                batch,
                statements.allocate_ids(
                    connection, statements.SUBMISSION, len(batch), writer=self._writer
                ),
                now,
            )
            return [item.allocated_id or 0 for item in batch]

        def landed(connection: Connection, ids: Sequence[int]) -> bool:
            # only this run's writer adds submissions to it
            return self._row_exists(connection, statements.SUBMISSION, ids[0])

        with self._write_lock:
            ids = run_in_connection(self._writes, work, landed=landed)
        with self._queue_lock:
            for item, submission_id in zip(batch, ids, strict=True):
                item.allocated_id = submission_id
                self._pending.append(
                    _Pending(submission_id, item.instance, item.metadata)
                )

    def _insert_submissions(
        self,
        connection: Connection,
        batch: list[Staged],
        ids: list[int],
        now: datetime,
    ) -> None:
        """Insert the submission rows of staged registrations, with these ids."""
        rows = []
        for item, submission_id in zip(batch, ids, strict=True):
            item.allocated_id = submission_id
            rows.append(
                (
                    submission_id,
                    self._run_id,
                    item.instance,
                    codecs.metadata_to_json(item.metadata),
                    now,
                )
            )
        statements.FAST_SUBMISSION.execute(connection, rows)

    def _drain_pending(self) -> None:
        while self._process_pending_batch():
            pass

    def _process_pending_batch(self) -> bool:
        """Process the oldest pending submissions, several in one transaction.

        Returns:
            False if there was nothing to process.
        """
        with self._queue_lock:
            batch = list(itertools.islice(self._pending, _PROCESSING_BATCH))
        if not batch:
            return False
        self._process(
            [(item.instance, item.metadata, item.submission_id) for item in batch]
        )
        with self._queue_lock:
            for _ in batch:
                self._pending.popleft()
        return True

    def _process(
        self,
        registrations: list[tuple[str, SnapshotMetadata, int | Staged | None]],
        staged: list[Staged] | None = None,
    ) -> list[_Outcome]:
        """Process registrations in order, in one transaction; write files after.

        Everything is worked out in memory first (new nodes, edges, workflow
        snapshots, retirements), then written with one statement per table, so a
        batch of registrations costs a handful of round trips and one commit. If the
        transaction fails, the in-memory graph is reloaded from the database, where
        nothing of the batch exists.

        Args:
            registrations: (instance, metadata, submission) in order; the
                submission is its row id if already committed, its staged form if
                its row commits with this batch, None for ``add_snapshot``.
            staged: The staged registrations whose submission rows to insert.
        """
        now = datetime.now(timezone.utc)
        if self._graph_stale:
            self._graph = run_transaction(self._engine, self._load_graph)
            self._graph_stale = False
        try:
            batch = _Batch(staged=staged or [])
            outcomes = [
                self._register(batch, instance, metadata, submission_id, now)
                for instance, metadata, submission_id in registrations
            ]
            with self._write_lock:
                run_in_connection(
                    self._writes,
                    lambda connection: self._write_batch(connection, batch, now),
                    # only this run's writer adds nodes to it
                    landed=lambda connection, first_node: self._row_exists(
                        connection, statements.NODE, first_node
                    ),
                )
        except BaseException:
            # the graph holds what did not commit: reload it, now or before next use
            self._graph_stale = True
            self._graph = run_transaction(self._engine, self._load_graph)
            self._graph_stale = False
            raise
        for outcome in outcomes:
            self._write_files(outcome.found)
        return outcomes

    def _register(
        self,
        batch: _Batch,
        instance: str,
        metadata: SnapshotMetadata,
        submission: int | Staged | None,
        now: datetime,
    ) -> _Outcome:
        """Apply one registration to the in-memory graph and note its rows."""
        node = self._graph.new_node(0, instance, metadata, False)
        batch.nodes.append((node, submission))
        batch.edges.extend(
            (node, peer) for peer in self._graph.add(node) if peer is not node
        )
        outcome = _Outcome(node, created_at=now)
        found = self._graph.find_workflow_snapshots(node, self._policy)
        if not found:
            return outcome
        taken = datetime.now()
        for nodes in found:
            members = [Member(n.instance, n.metadata, n.is_restart) for n in nodes]
            path = None
            if self._allocator is not None:
                path = self._allocator.allocate(taken, batch.paths)
                batch.paths.add(str(path))
            outcome.found.append(
                _Found(
                    nodes,
                    path,
                    describe(self._topology.model_name, members, taken),
                    resume_mapping(members),
                )
            )
        batch.workflow_snapshots.extend(outcome.found)
        retirement = self._graph.plan_retirement(found)
        batch.retired.extend(retirement.retired)
        self._graph.retire(retirement)
        return outcome

    def _row_exists(self, connection: Connection, table: Table, row_id: int) -> bool:
        """Whether this run has a row with that id in the table."""
        found = connection.execute(
            select(table.c.id).where(
                table.c.id == row_id, table.c.run_id == self._run_id
            )
        ).first()
        return found is not None

    def _write_batch(self, connection: Connection, batch: _Batch, now: datetime) -> int:
        """Insert a batch's rows: nodes, edges, workflow snapshots, members.

        Returns:
            The id of the batch's first node, to tell later whether it committed.
        """
        self._heartbeat_if_due(connection)
        ids = statements.allocate_many(
            connection,
            {
                statements.SUBMISSION: len(batch.staged),
                statements.NODE: len(batch.nodes),
                statements.WORKFLOW_SNAPSHOT: len(batch.workflow_snapshots),
            },
            writer=self._writer,
        )
        if batch.staged:
            self._insert_submissions(
                connection, batch.staged, ids[statements.SUBMISSION], now
            )
        for (node, _), node_id in zip(batch.nodes, ids[statements.NODE], strict=True):
            node.id = node_id
        statements.FAST_NODE.execute(
            connection,
            [
                (
                    node.id,
                    self._run_id,
                    node.instance,
                    node.num,
                    False,
                    submission.allocated_id
                    if isinstance(submission, Staged)
                    else submission,
                    now,
                    *codecs.node_values(node.metadata),
                )
                for node, submission in batch.nodes
            ],
        )
        statements.FAST_EDGE.execute(
            connection,
            [
                (min(node.id, peer.id), max(node.id, peer.id))
                for node, peer in batch.edges
            ],
        )
        if batch.workflow_snapshots:
            snapshot_ids = ids[statements.WORKFLOW_SNAPSHOT]
            statements.FAST_WORKFLOW_SNAPSHOT.execute(
                connection,
                [
                    (
                        snapshot_id,
                        self._run_id,
                        # without a folder there is no file; keep paths unique
                        str(item.path.resolve())
                        if item.path is not None
                        else f"(no file) run {self._run_id} {uuid.uuid4().hex}",
                        item.description,
                        now,
                    )
                    for item, snapshot_id in zip(
                        batch.workflow_snapshots, snapshot_ids, strict=True
                    )
                ],
            )
            member_rows: list[tuple[int, int]] = []
            for item, snapshot_id in zip(
                batch.workflow_snapshots, snapshot_ids, strict=True
            ):
                item.id = snapshot_id
                member_rows.extend((snapshot_id, member.id) for member in item.nodes)
            statements.FAST_MEMBER.execute(connection, member_rows)
        statements.FAST_RETIRE.execute(
            connection, [(node.id, now) for node in batch.retired]
        )
        return batch.nodes[0][0].id

    def _write_files(self, found: list[_Found]) -> None:
        self._files.retry()
        for item in found:
            if item.path is not None:
                self._files.write(
                    item.path,
                    render(
                        item.resume, item.description, ymmsl_version=self._ymmsl_version
                    ),
                )

    def _publish(self, outcome: _Outcome) -> list[WorkflowSnapshot]:
        result = []
        for item in outcome.found:
            nodes = tuple(
                self._public_node(node)
                for node in sorted(
                    item.nodes, key=lambda n: instance_sort_key(n.instance)
                )
            )
            result.append(
                WorkflowSnapshot(
                    id=item.id,
                    campaign=self._campaign_name,
                    run=self._run_number,
                    nodes=nodes,
                    path=item.path.resolve() if item.path is not None else None,
                    created_at=outcome.created_at,
                    description=item.description,
                )
            )
        return result

    def _public_node(self, node: GraphNode) -> SnapshotNode:
        return SnapshotNode(
            num=node.num,
            instance=queries.reference(node.instance),
            snapshot=node.metadata,
            peers=frozenset(queries.reference(peer) for peer in node.peers),
            id=node.id,
            is_restart=node.is_restart,
            run=self._run_number,
        )

    # ---------------------------------------------------------------- plumbing

    def _heartbeat_if_due(
        self, connection: Connection | None = None, *, force: bool = False
    ) -> None:
        """Renew the writer lease; fail if another process took the run over."""
        if not force and _monotonic() - self._last_heartbeat < self._heartbeat_interval:
            return

        def beat(work_connection: Connection) -> None:
            self._lease.renew(work_connection, self._run_id, self._run_description())

        if connection is None:
            with self._write_lock:
                run_in_connection(self._writes, beat)
        else:
            beat(connection)
        self._last_heartbeat = _monotonic()

    def _run_description(self) -> str:
        return f"run {self._run_number} of campaign {self._campaign_name!r}"

    def _read(self, work: Callable[[Session], _T]) -> _T:
        if self._in_memory:
            with self._lock:
                return run_transaction(self._engine, work)
        return run_transaction(self._engine, work)

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError("this snapshot registry is closed")

    def _refuse_if_failed(self) -> None:
        """Refuse new registrations once the registry cannot go on."""
        if isinstance(self._error, WriterConflictError):
            raise WriterConflictError(str(self._error)) from self._error
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
        if self._error is not None:
            raise WorkerError(
                f"the snapshot registry worker failed: {self._error}"
            ) from self._error


def _configuration_text(config: Any) -> str:
    try:
        return str(ymmsl.dump(config))
    except Exception:  # a partial or hand-made configuration: keep what we can
        return repr(config)


def _monotonic() -> float:
    return time.monotonic()
