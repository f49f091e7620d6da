"""Cleaning up as the run goes: the worker behind ``snapreg manage --keep N``.

A :class:`RetentionWorker` is a thread in the manager's process. The registry
signals it (:meth:`RetentionWorker.signal`, given to the registry as its
``on_workflow_snapshots``) after every commit that added workflow snapshots; it
then runs the very plan of ``snapreg gc --keep N --delete`` for the campaign
(:func:`~snapreg.tools.gc.plan_cleanup` and
:func:`~snapreg.tools.gc_delete.delete_files`, the same rules, the same
``deleted_snapshot_file`` rows), with a :class:`~snapreg.tools.gc_read.LiveRun` that
keeps what the running manager still needs on top of them.

Off the registration path:

* :meth:`~RetentionWorker.signal` sets a flag under a lock that no pass ever
  holds: a registration never waits for a pass, a plan or a deletion. (Recording
  a batch of deletions is a short write transaction: on SQLite a registration
  may wait the few milliseconds it holds the database's write lock, as it would
  for any other writer.)
* At most one pass is in flight; signals that arrive meanwhile are coalesced
  into one more pass after it. A pass looks only at the nodes whose files are
  not deleted yet (gc leaves the others in the database), but the database
  still goes over the campaign's nodes to tell which those are; so the next
  pass starts no sooner than ``idle_factor`` times the last one's duration
  after it (and ``min_interval`` after it): however long a pass takes on a
  large campaign, retention takes at most a fifth of the time of one core by
  default, and files wait a little longer to go.

Why it never deletes a file the newest ``keep`` workflow snapshots need, at any
moment, SIGKILL included: a pass deletes only files of nodes whose rows it read
committed, and only those that no workflow snapshot among the newest ``keep``
*as read* needs, nor any active node of the newest run or of a run with a
writer (this one among them), nor the run's resume files. The newest ``keep``
at any later moment are some of those read and workflow snapshots committed
later; a later one's members are nodes that were active when the pass read (a
node is only ever retired, never made active again, and workflow snapshots are
found among active nodes only) or that were registered after it, which the
pass does not know of and so cannot delete.
A kill between unlinking a batch of files and recording it leaves those files
deleted and unrecorded, as with ``snapreg gc``; they are files the newest
``keep`` did not need.

Never a file of a workflow snapshot that is being written: one whose rows have
committed and whose file the registry has not written yet. Being committed is
not enough to be among the newest ``keep``: one registration can complete
several workflow snapshots (``--policy all``), one commit can hold several
registrations (group commit), and a file that could not be written (a full
disk) waits while newer ones commit. So the registry announces each file before
its rows commit and until it is written
(:attr:`~snapreg.SnapshotRegistry.unwritten_workflow_snapshot_files`), and the
plan, after reading the rows, keeps every file those workflow snapshots'
members name. A workflow snapshot that commits after the read is made of nodes
that were active at the read, kept as above.

The plan reads every row in one transaction, one consistent view (WAL on
SQLite, ``REPEATABLE READ`` on PostgreSQL), and asks for the unwritten files
inside it, after its reads: "as read" above is one moment.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from snapreg.errors import ConfigurationError
from snapreg.tools.gc import plan_cleanup
from snapreg.tools.gc_delete import CleanupResult, delete_files
from snapreg.tools.gc_read import LiveRun

_logger = logging.getLogger(__name__)

#: A pass starts no sooner than this many times the last one's duration after it.
IDLE_FACTOR = 4.0
#: ... and no sooner than this many seconds after it.
MIN_INTERVAL = 0.0


@dataclass
class RetentionStats:
    """What a worker has done so far.

    Attributes:
        passes: Passes finished (with or without an error).
        failed_passes: Passes that stopped on an error (logged).
        deleted: Files deleted and recorded.
        bytes: Their bytes.
        not_deleted: Files a pass meant to delete but did not (changed since
            the plan, or the system refused; logged).
        last_pass_seconds: How long the last pass took.
    """

    passes: int = 0
    failed_passes: int = 0
    deleted: int = 0
    bytes: int = 0
    not_deleted: int = 0
    last_pass_seconds: float = 0.0


class RetentionWorker:
    """Deletes, as the run goes, what ``snapreg gc --keep N --delete`` would.

    Made before the registry, so that the registry can be given :meth:`signal`;
    started once the registry has opened its run, and stopped when the run is
    over.
    """

    def __init__(
        self,
        database_url: str,
        keep: int,
        *,
        idle_factor: float = IDLE_FACTOR,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        """Args:
        database_url: The campaign's database.
        keep: How many of the newest workflow snapshots to keep, at least 1.
        idle_factor: Pause after a pass, in multiples of its duration.
        min_interval: Seconds from the end of one pass to the start of the
            next, at least.

        Raises:
            ConfigurationError: ``keep`` below 1.
        """
        if keep < 1:
            raise ConfigurationError("--keep must be at least 1")
        self.database_url = database_url
        self.keep = keep
        self._idle_factor = idle_factor
        self._min_interval = min_interval
        self._state = threading.Condition(threading.Lock())
        self._requested = False
        self._stopping = False
        self._not_before = 0.0  # time.monotonic() before which no pass starts
        self._campaign = ""
        self._live = LiveRun(run=0)
        self.stats = RetentionStats()
        self._thread = threading.Thread(
            target=self._work, name="snapreg retention", daemon=True
        )

    def start(self, campaign: str, live: LiveRun) -> None:
        """Start the worker on the registry's run, with a first pass at once.

        The first pass deletes what earlier runs left that the newest workflow
        snapshots do not need.

        Args:
            campaign: The campaign.
            live: The running manager's run (see
                :class:`~snapreg.tools.gc_read.LiveRun`).
        """
        self._campaign = campaign
        self._live = live
        self.signal()
        self._thread.start()

    def signal(self) -> None:
        """Ask for a pass; return at once, however busy the worker is.

        Signals that arrive while a pass runs are coalesced into one more pass;
        those before :meth:`start`, into its first pass.
        """
        with self._state:
            self._requested = True
            self._state.notify()

    def stop(self) -> None:
        """Stop the worker, after a last pass if one was asked for since the last.

        Waits for the pass under way, if any, to finish.
        """
        with self._state:
            self._stopping = True
            self._state.notify()
        if self._thread.ident is not None:
            self._thread.join()

    # ---------------------------------------------------------------- plumbing

    def _work(self) -> None:
        while self._next():
            self._pass()

    def _next(self) -> bool:
        """Wait for a pass to be due; False once the worker is to stop.

        The pause after a pass is cut short by :meth:`stop`, for the last pass.
        """
        with self._state:
            self._state.wait_for(lambda: self._requested or self._stopping)
            while not self._stopping:
                pause = self._not_before - time.monotonic()
                if pause <= 0:
                    break
                self._state.wait(pause)
            if not self._requested:
                return False
            self._requested = False
            return True

    def _pass(self) -> None:
        """Plan and delete once; an error is logged and the next pass tries again."""
        started = time.monotonic()
        try:
            plan = plan_cleanup(
                self.database_url, self._campaign, self.keep, live=self._live
            )
            result = delete_files(self.database_url, plan) if plan.deletable else None
        except Exception:
            self.stats.failed_passes += 1
            _logger.warning(
                "snapreg could not clean up instance snapshot files this time;"
                " it tries again after the next workflow snapshot",
                exc_info=True,
            )
            result = None
        finally:
            duration = time.monotonic() - started
            self.stats.passes += 1
            self.stats.last_pass_seconds = duration
            with self._state:
                self._not_before = time.monotonic() + max(
                    self._min_interval, self._idle_factor * duration
                )
        if result is not None:
            self._report(result, duration)

    def _report(self, result: CleanupResult, duration: float) -> None:
        self.stats.deleted += len(result.deleted)
        self.stats.bytes += result.bytes
        self.stats.not_deleted += len(result.failed)
        if result.deleted:
            _logger.info(
                "snapreg deleted %d instance snapshot file(s), %d bytes, that none"
                " of the newest %d workflow snapshots needs (%.2f s)",
                len(result.deleted),
                result.bytes,
                self.keep,
                duration,
            )
        for entry, problem in result.failed:
            _logger.warning("snapreg did not delete %s: %s", entry.path, problem)
