"""Group commit: registrations from many threads share one transaction.

MUSCLE3's manager calls ``register_snapshot`` from one thread per instance. Each
registration must be durable before its call returns, and a commit costs about as
much as everything else a registration does; so registrations that arrive while a
commit is under way wait for the next one, and the oldest waiting registration
leads it: it commits itself and every one queued behind it, wakes exactly those
threads, and hands the lead to the next in line. What a commit does is the
registry's business (a callable); this module only orders the threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from snapreg.rules.metadata import SnapshotMetadata

#: A leader waits for concurrent registrations to join its commit while they keep
#: coming, at most this often, and no longer than this for the next one.
GATHER_ROUNDS = 8
GATHER_PAUSE = 0.00001


@dataclass
class Staged:
    """A registration waiting for the commit that acknowledges it."""

    instance: str
    metadata: SnapshotMetadata
    previous_counts: dict[str, list[int]] | None
    #: notified when this registration is committed, failed, or leads
    wakeup: threading.Condition
    #: the submission row's id in the transaction under way
    allocated_id: int | None = None
    #: set once that transaction has committed: the acknowledgement
    submission_id: int | None = None
    error: BaseException | None = None


class GroupCommit:
    """The queue of staged registrations and who leads the next commit.

    Every method is called with ``mutex`` held, the lock the registry guards its
    own per-instance state with, so that staging a registration and checking it
    against that state is one step.
    """

    def __init__(
        self,
        mutex: threading.Lock,
        commit: Callable[[list[Staged]], None],
        failed: Callable[[list[Staged], BaseException], None],
    ) -> None:
        """Args:
        mutex: Held by every caller; released while a commit runs.
        commit: Commits a batch, oldest first, in one transaction; sets each
            registration's ``allocated_id``. Called without ``mutex``.
        failed: Told, with ``mutex`` held, of a batch whose commit raised,
            newest first, before its threads wake up with the error.
        """
        self._mutex = mutex
        self._commit = commit
        self._failed = failed
        # registrations waiting for their commit, oldest (the leader) first
        self._staged: deque[Staged] = deque()
        self._last_batch_size = 0
        # per registering thread: the condition it waits on
        self._threads = threading.local()
        # notified when a registration joins the queue
        self._arrival = threading.Condition(mutex)

    def wakeup_of_this_thread(self) -> threading.Condition:
        """The condition this thread waits on for its registration (one at a time)."""
        wakeup: threading.Condition | None = getattr(self._threads, "wakeup", None)
        if wakeup is None:
            wakeup = self._threads.wakeup = threading.Condition(self._mutex)
        return wakeup

    def wait_for_commit(self, staged: Staged) -> None:
        """Queue a registration and return once a commit has acknowledged it.

        The oldest waiting registration leads: it commits itself and every one
        behind it, then wakes them and hands the lead to the next one in line.
        Only the threads concerned are woken. Sets ``staged.submission_id``, or
        ``staged.error`` if the commit failed.
        """
        self._staged.append(staged)
        self._arrival.notify()  # a leader gathering followers
        while staged.submission_id is None and staged.error is None:
            if self._staged[0] is staged:
                self._lead()
            else:
                staged.wakeup.wait()

    def _lead(self) -> None:
        """Commit every staged registration in one transaction.

        Releases the mutex while the commit runs, so that other threads can stage
        theirs for the next one.
        """
        if self._last_batch_size > 1:
            self._gather_followers()
        batch = list(self._staged)
        self._last_batch_size = len(batch)
        error: BaseException | None = None
        self._mutex.release()
        try:
            self._commit(batch)
        except BaseException as err:  # handed to every waiting registration
            error = err
        finally:
            self._mutex.acquire()
            for item in batch:
                self._staged.popleft()
                item.wakeup.notify()
            if self._staged:
                self._staged[0].wakeup.notify()  # the next leader
        if error is not None:
            for item in batch:
                item.error = error
            self._failed(batch[::-1], error)
            return
        for item in batch:
            item.submission_id = item.allocated_id

    def _gather_followers(self) -> None:
        """Let registrations that are on their way join the leader's commit.

        Called by the leader when the previous commit was shared: threads register
        concurrently, and those just acknowledged are probably about to send their
        next one. The leader waits while they keep arriving (each arrival wakes it
        at once), and goes ahead as soon as none has come for a moment. A lone
        registering thread never gets here and pays nothing.
        """
        for _ in range(GATHER_ROUNDS):
            waiting = len(self._staged)
            self._arrival.wait(timeout=GATHER_PAUSE)
            if len(self._staged) == waiting:
                return
