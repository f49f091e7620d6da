"""snapreg's PostgreSQL advisory locks: their keys, and who holds a run's.

A run's writer holds the run's writer lock on its own database session for as long
as it lives, so on PostgreSQL whether a run is being written is whether that lock
is held: the registry asks before it takes a run over, readers before they call a
run running. Looking is read-only: it works in a read-only transaction and for a
role that may only read.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from snapreg.storage.transactions import host_and_pid, process_alive

#: First keys of snapreg's PostgreSQL advisory locks (their two-key form). A run's
#: writer holds (RUN_WRITER_LOCK_SPACE, run) on its own database session for as long
#: as it lives; openers of a campaign take turns on (CAMPAIGN_LOCK_SPACE, campaign);
#: schema changes take turns on (SCHEMA_LOCK_SPACE, 0).
RUN_WRITER_LOCK_SPACE = 0x736E7072
CAMPAIGN_LOCK_SPACE = 0x736E7063
SCHEMA_LOCK_SPACE = 0x736E7073

# the server processes whose sessions hold writer locks in this database; the
# two-key form of an advisory lock shows its keys as classid and objid, with
# objsubid 2
_WRITER_LOCKS = (
    "SELECT objid::bigint AS key, pid FROM pg_locks"
    " WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database"
    " WHERE datname = current_database())"
    " AND classid::bigint = :space AND objsubid = 2"
)
_ALL_WRITER_LOCKS = text(_WRITER_LOCKS)
_ONE_WRITER_LOCK = text(_WRITER_LOCKS + " AND objid::bigint = :key")


def writer_lock_key(run_id: int) -> tuple[int, int]:
    """The PostgreSQL advisory lock that a run's writer holds while it lives."""
    return RUN_WRITER_LOCK_SPACE, run_id % 2**31


def writer_lock_holder(connection: Connection, run_id: int) -> int | None:
    """PostgreSQL: the server process whose session holds the run's writer lock.

    Returns:
        Its process id, or None when no session holds the lock.
    """
    space, key = writer_lock_key(run_id)
    found = connection.execute(_ONE_WRITER_LOCK, {"space": space, "key": key}).first()
    return None if found is None else int(found.pid)


def held_writer_locks(connection: Connection) -> set[int]:
    """PostgreSQL: the second keys of every writer lock held now (one query).

    A run is being written when ``writer_lock_key(run_id)[1]`` is among them.
    """
    return {
        int(row.key)
        for row in connection.execute(
            _ALL_WRITER_LOCKS, {"space": RUN_WRITER_LOCK_SPACE}
        )
    }


def writer_present(
    run_id: int, host: str | None, pid: int | None, held_locks: set[int] | None
) -> bool | None:
    """Whether a run's lease holder is there, as far as its absence can tell.

    PostgreSQL (``held_locks`` from :func:`held_writer_locks`): whether a
    session holds the run's lock. SQLite (``held_locks`` None): for a holder on
    this host, whether its process lives; for one on another host None, not
    known: its heartbeat, which stalls while the database is unavailable, is
    all there is to go by.
    """
    if held_locks is not None:
        return writer_lock_key(run_id)[1] in held_locks
    if host == host_and_pid()[0] and pid is not None:
        return process_alive(pid)
    return None
