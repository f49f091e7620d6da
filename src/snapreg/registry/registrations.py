"""The registration path: counts checked, group commit, processing, what is pending.

Each registration's message counts are checked against the instance's previous
ones before it is staged; staged registrations are committed and processed
together (:mod:`~snapreg.registry.group_commit`, then
:mod:`~snapreg.registry.batch_writer`); submissions stored but not processed wait
here, in order, for the run's next opening; refused registrations are kept for the
caller. The state is guarded by one condition, which the group commit shares.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from snapreg.errors import (
    DatabaseRefusedError,
    SnapregError,
    StorageUnavailableError,
    WriterConflictError,
)
from snapreg.registry.batch_writer import BatchWriter, Outcome, Registration
from snapreg.registry.group_commit import GroupCommit, Staged
from snapreg.registry.store import RunStore
from snapreg.rules.graph import ActiveGraph
from snapreg.rules.metadata import CountRules, SnapshotMetadata, check_counts
from snapreg.storage import codecs, queries

_logger = logging.getLogger(__name__)

# Submissions stored unprocessed (a crash, a failed processing) are processed this
# many per transaction when the run is opened again.
_PROCESSING_BATCH = 64


@dataclass(frozen=True)
class Refusal:
    """A registration that ``SnapshotRegistry.register_snapshot`` did not store.

    Attributes:
        instance: The instance that sent it.
        error: Why: a :class:`~snapreg.errors.SnapregError` for what snapreg
            refuses or cannot store, anything else for a bug.
    """

    instance: str
    error: Exception


@dataclass
class Pending:
    """An acknowledged submission waiting to be processed."""

    submission_id: int
    instance: str
    metadata: SnapshotMetadata


class Registrations:
    """A run's registration path and its state between calls.

    The state is guarded by :attr:`lock`; the graph and the database by the
    store's lock, taken before :attr:`lock` where both are held.
    """

    def __init__(
        self,
        writer: BatchWriter,
        processing_lock: threading.RLock,
        count_rules: CountRules,
    ) -> None:
        self._writer = writer
        self._processing_lock = processing_lock
        self._count_rules = count_rules
        self.mutex = threading.Lock()
        #: Guards the state here; the registry's worker waits on it.
        self.lock = threading.Condition(self.mutex)
        self._group_commit = GroupCommit(self.mutex, self._commit, self._forget_counts)
        # each instance's latest message counts, of the last registration staged
        self._last_counts: dict[str, dict[str, list[int]]] = {}
        self._pending: deque[Pending] = deque()
        self._refusals: list[Refusal] = []
        #: Why registrations cannot be processed any more (None while they can).
        self.error: BaseException | None = None

    @property
    def pending_count(self) -> int:
        """How many acknowledged submissions still wait for processing."""
        with self.lock:
            return len(self._pending)

    @property
    def refusals(self) -> list[Refusal]:
        """The registrations refused by :meth:`register`'s caller, oldest first."""
        with self.lock:
            return list(self._refusals)

    def start(self, graph: ActiveGraph) -> None:
        """Start a run just created, from the graph built as its rows were written.

        Nothing of it is pending and no instance has counts yet; reading its
        restart nodes and their edges back cost a quarter of opening a run of
        50,001 instances.
        """
        self._writer.graph = graph

    def resume(self, store: RunStore) -> None:
        """Take up the run where its rows leave it.

        Loads the active graph, the latest counts and the submissions that were
        acknowledged but never processed (a crash), and processes those now, in
        order.
        """
        run = store.opened()
        store.read(lambda session: self.load(session, run.run_id))
        if self.pending_count:
            _logger.info(
                "%s has %d acknowledged submissions to process",
                run.describe().capitalize(),
                self.pending_count,
            )
        with self._processing_lock:
            self.drain_pending()

    def load(self, session: Session, run_id: int) -> None:
        """Start from a run's rows: its active graph and unprocessed submissions."""
        graph = self._writer.load_graph(session)
        pending = [
            Pending(
                row.id, row.instance, codecs.metadata_from_json(row.snapshot_metadata)
            )
            for row in queries.pending_submissions(session, run_id)
        ]
        with self.lock:
            self._last_counts = {
                instance: nodes[-1].metadata.port_message_counts
                for instance, nodes in graph.nodes.items()
                if nodes and not nodes[-1].is_restart
            }
            for item in pending:
                self._last_counts[item.instance] = item.metadata.port_message_counts
            self._pending = deque(pending)

    def add(self, name: str, metadata: SnapshotMetadata) -> Outcome:
        """Check and process one registration now, after the pending ones.

        Raises:
            InvalidInputError: its counts do not follow the instance's last ones.
        """
        with self._processing_lock:
            self.drain_pending()
            with self.lock:
                last = self._last_counts.get(name, {})
                check_counts(name, last, metadata, self._count_rules)
            (outcome,) = self._writer.process([(name, metadata, None)])
            with self.lock:
                self._last_counts[name] = metadata.port_message_counts
            return outcome

    def register(self, name: str, metadata: SnapshotMetadata) -> None:
        """Check and stage a registration; return once a commit has stored it.

        Raises:
            InvalidInputError: its counts do not follow the instance's last ones.
            TransientDatabaseError: the database stayed unavailable.
            WriterConflictError: the run was taken over.
        """
        with self.lock:
            previous = self._last_counts.get(name)
            check_counts(name, previous or {}, metadata, self._count_rules)
            staged = Staged(
                name, metadata, previous, self._group_commit.wakeup_of_this_thread()
            )
            self._last_counts[name] = metadata.port_message_counts
            self._group_commit.wait_for_commit(staged)
        if staged.error is not None:
            raise staged.error

    def refuse(self, instance: Any, err: Exception) -> None:
        """Log and keep a registration that was not stored."""
        with self.lock:
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

    def drain_pending(self) -> None:
        """Process the pending submissions, oldest first, several per transaction.

        Called with the processing lock held.
        """
        while True:
            with self.lock:
                batch = list(itertools.islice(self._pending, _PROCESSING_BATCH))
            if not batch:
                return
            self._writer.process(
                [(item.instance, item.metadata, item.submission_id) for item in batch]
            )
            with self.lock:
                for _ in batch:
                    self._pending.popleft()

    def _commit(self, batch: list[Staged]) -> None:
        """Store and process staged registrations in one transaction (group commit).

        Should processing fail for a reason other than the database, their
        submissions are committed alone, to be processed when the run is opened
        again. Nothing older waits: submissions are only ever stored unprocessed
        once processing has failed for good, and then it is not tried any more.

        Raises:
            TransientDatabaseError: the database stayed unavailable through every
                retry; nothing of them was written.
        """
        with self._processing_lock:
            if self.error is None:
                try:
                    registrations: list[Registration] = [
                        (item.instance, item.metadata, item) for item in batch
                    ]
                    self._writer.process(registrations, staged=batch)
                    return
                except (
                    StorageUnavailableError,
                    DatabaseRefusedError,
                    DBAPIError,
                    sqlite3.Error,
                ):
                    raise  # the database's answer, for the caller; nothing written
                except WriterConflictError as err:
                    self.error = err  # this registry must not write the run any more
                    raise
                except Exception as err:
                    _logger.error(
                        "Processing registrations failed; later ones are refused,"
                        " and what was acknowledged is processed when the run is"
                        " opened again",
                        exc_info=err,
                    )
                    self.error = err
            ids = self._writer.commit_submissions(batch)
            with self.lock:
                for item, submission_id in zip(batch, ids, strict=True):
                    item.allocated_id = submission_id
                    self._pending.append(
                        Pending(submission_id, item.instance, item.metadata)
                    )

    def _forget_counts(self, batch: list[Staged], error: BaseException) -> None:
        """Undo what a failed batch's registrations set as their latest counts.

        ``batch`` comes newest first, so each instance ends at the counts it had
        before the batch. Called with :attr:`lock` held.
        """
        for item in batch:
            if self._last_counts.get(item.instance) is (
                item.metadata.port_message_counts
            ):
                if item.previous_counts is None:
                    del self._last_counts[item.instance]
                else:
                    self._last_counts[item.instance] = item.previous_counts
