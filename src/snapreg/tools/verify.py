"""``snapreg verify``: check a campaign from its rows alone, as fsck checks a disk.

What is checked, run by run:

* the materialisation: the run's stored nodes replayed in id order through the
  registry's own rules and graph give exactly its stored consistent pairs,
  workflow snapshots and retirements (:mod:`snapreg.tools.verify_replay`); a
  stored pair the rules do not imply, and a stored workflow snapshot whose members
  are not one consistent node per instance, are named as such;
* the files: every workflow snapshot file is there and says what its rows say,
  and every member's snapshot file is there with its recorded size
  (:mod:`snapreg.tools.verify_files`); files ``snapreg gc`` deleted and recorded
  are no problem, the workflow snapshots that needed them are listed as no
  longer resumable;
* the database itself: SQLite's ``quick_check`` and ``foreign_key_check``; on
  PostgreSQL, amcheck's ``bt_index_check`` of every snapreg index when the
  extension is installed (PostgreSQL enforces the foreign keys itself).

Nothing is written: the database is opened through
:class:`~snapreg.storage.readonly.ReadOnlyStore`, and the rows are read in one
read-only transaction, one consistent view, streamed a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from snapreg.rules.graph import POLICIES, Policy
from snapreg.storage import queries, schema
from snapreg.storage.readonly import ReadOnlyStore
from snapreg.storage.transactions import is_unreadable_file, storage_error
from snapreg.tools.reader import campaign_name, topology_from_signature
from snapreg.tools.verify_files import FileChecks
from snapreg.tools.verify_findings import Findings, Problem
from snapreg.tools.verify_replay import RunReplay
from snapreg.tools.verify_rows import STREAM_CHUNK, RunInfo

#: Told how many of the campaign's nodes were replayed, of how many.
Progress = Callable[[int, int], None]

# SQLSTATEs amcheck raises for a damaged index or table, and for a missing grant
_CORRUPT = ("XX001", "XX002")
_NOT_ALLOWED = "42501"


@dataclass(frozen=True)
class Verification:
    """What ``snapreg verify`` found in a campaign.

    Attributes:
        campaign: The campaign's name.
        database: The database, password hidden.
        runs: Runs checked.
        nodes: Snapshot nodes replayed.
        pairs: Stored consistent pairs compared.
        workflow_snapshots: Stored workflow snapshots compared.
        workflow_files: Workflow snapshot files checked.
        member_files: Members' snapshot files checked (once per workflow
            snapshot that needs them).
        problems: What is wrong, in the order found.
        no_longer_resumable: Workflow snapshots that need a file ``snapreg gc``
            deleted and recorded, as inclusive ranges of ids; not problems.
        notes: What could not be checked, and why.
    """

    campaign: str
    database: str
    runs: int
    nodes: int
    pairs: int
    workflow_snapshots: int
    workflow_files: int
    member_files: int
    problems: tuple[Problem, ...]
    no_longer_resumable: tuple[tuple[int, int], ...]
    notes: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def not_resumable_count(self) -> int:
        """How many workflow snapshots can no longer be resumed from."""
        return sum(last - first + 1 for first, last in self.no_longer_resumable)


def verify_campaign(
    database_url: str, campaign: str | None = None, *, progress: Progress | None = None
) -> Verification:
    """Check a campaign's rows, files and database; write nothing.

    Args:
        database_url: SQLAlchemy URL of the database.
        campaign: The campaign; None for the database's only one.
        progress: Told, every few thousand nodes, how many were replayed of how
            many.

    Raises:
        NotFoundError: no such database or campaign.
        SchemaVersionError: the schema does not match this snapreg.
        StorageUnavailableError: the database cannot be read (and its own
            integrity check found nothing wrong: otherwise a read that fails is
            reported as an ``integrity`` problem).
    """
    findings = Findings()
    with ReadOnlyStore(database_url, check_schema=True) as store:
        sound = _check_database(store, findings)
        with store.transaction() as connection, Session(bind=connection) as session:
            name = campaign_name(session, campaign, store.location)
            campaign_row = queries.campaign_row(session, name)
            try:
                counts = _check_rows(
                    connection, session, campaign_row.id, findings, progress
                )
            except DatabaseError as err:
                if sound and (
                    isinstance(err, OperationalError) or is_unreadable_file(err)
                ):
                    raise storage_error(store.engine.url, err, doing="read") from err
                if sound:
                    raise
                findings.add(
                    Problem(
                        "integrity",
                        "reading the campaign's rows failed, so they were not"
                        f" all checked: {' '.join(str(err.orig).split())}",
                    )
                )
                counts = {}
        location = store.location
    return Verification(
        campaign=name,
        database=location,
        runs=counts.get("runs", 0),
        nodes=counts.get("nodes", 0),
        pairs=counts.get("pairs", 0),
        workflow_snapshots=counts.get("workflow_snapshots", 0),
        workflow_files=counts.get("workflow_files", 0),
        member_files=counts.get("member_files", 0),
        problems=tuple(findings.problems),
        no_longer_resumable=tuple(findings.not_resumable_ranges()),
        notes=tuple(findings.notes),
    )


def _check_rows(
    connection: Connection,
    session: Session,
    campaign_id: int,
    findings: Findings,
    progress: Progress | None,
) -> dict[str, int]:
    """Replay every run of the campaign and check its files; the counts checked."""
    run = schema.RunRow
    node = schema.SnapshotNodeRow
    runs = session.execute(
        select(run.id, run.number, run.model_name, run.topology, run.policy)
        .where(run.campaign_id == campaign_id)
        .order_by(run.number)
    ).all()
    total = session.scalar(
        select(func.count())
        .select_from(node)
        .join(run, run.id == node.run_id)
        .where(run.campaign_id == campaign_id)
    )
    files = FileChecks(session, campaign_id, findings)
    counts = dict.fromkeys(("runs", "nodes", "pairs", "workflow_snapshots"), 0)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None and done % STREAM_CHUNK == 0:
            progress(done, total or 0)

    for row in runs:
        info = _run_info(row, findings)
        if info is None:
            continue
        replay = RunReplay(connection, info, findings, files.check, tick)
        replay.replay()
        counts["runs"] += 1
        counts["nodes"] += replay.nodes
        counts["pairs"] += replay.pairs
        counts["workflow_snapshots"] += replay.workflow_snapshots
    files.finish()
    if progress is not None:
        progress(done, total or 0)
    counts["workflow_files"] = files.workflow_files
    counts["member_files"] = files.member_files
    return counts


def _run_info(row: Any, findings: Findings) -> RunInfo | None:
    """What the replay needs of a run; None, with a problem, if it is unreadable."""
    policy = row.policy or "all"
    if policy not in POLICIES:
        findings.add(
            Problem(
                "bad_row",
                f"run {row.number}: its policy {row.policy!r} is none of"
                f" {', '.join(POLICIES)}; its rows were not replayed",
                run=row.number,
            )
        )
        return None
    try:
        topology = topology_from_signature(row.topology)
        topology.instances  # noqa: B018 - a malformed signature fails here
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        findings.add(
            Problem(
                "bad_row",
                f"run {row.number}: its topology cannot be read ({err!r}); its"
                " rows were not replayed",
                run=row.number,
            )
        )
        return None
    return RunInfo(row.id, row.number, row.model_name, topology, cast(Policy, policy))


# ------------------------------------------------------------ the database itself


def _check_database(store: ReadOnlyStore, findings: Findings) -> bool:
    """The database's own integrity check; whether it found nothing wrong."""
    before = len(findings.problems)
    if store.backend == "sqlite":
        _sqlite_integrity(store, findings)
    else:
        _postgresql_integrity(store, findings)
    return len(findings.problems) == before


def _sqlite_integrity(store: ReadOnlyStore, findings: Findings) -> None:
    with store.transaction() as connection:
        try:
            found = connection.exec_driver_sql("PRAGMA quick_check").scalars().all()
        except DatabaseError as err:
            found = [" ".join(str(err.orig).split())]
        for message in found:
            if message != "ok":
                findings.add(Problem("integrity", f"SQLite quick_check: {message}"))
        try:
            dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
        except DatabaseError as err:
            findings.add(
                Problem(
                    "integrity",
                    "SQLite foreign_key_check: " + " ".join(str(err.orig).split()),
                )
            )
            return
        for table, rowid, parent, _ in dangling:
            findings.add(
                Problem(
                    "integrity",
                    f"table {table}, row {rowid}: refers to a {parent} row that does"
                    " not exist (SQLite foreign_key_check)",
                )
            )


def _postgresql_integrity(store: ReadOnlyStore, findings: Findings) -> None:
    tables = sorted(schema.Base.metadata.tables)

    def indexes(session: Session) -> list[tuple[int, str]] | None:
        if (
            session.execute(
                text("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")
            ).first()
            is None
        ):
            return None
        rows = session.execute(
            text(
                "SELECT c.oid, c.relname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_class t ON t.oid = i.indrelid"
                " JOIN pg_am a ON a.oid = c.relam"
                " WHERE a.amname = 'btree' AND t.relname = ANY(:tables)"
                " AND t.relnamespace = to_regnamespace(current_schema())"
                " ORDER BY c.relname"
            ),
            {"tables": tables},
        ).all()
        return [(int(oid), str(name)) for oid, name in rows]

    found = store.read(indexes)
    if found is None:
        findings.notes.append(
            "PostgreSQL's indexes were not checked: the amcheck extension is not"
            " installed in this database (CREATE EXTENSION amcheck); PostgreSQL"
            " enforces the foreign keys itself"
        )
        return
    for oid, name in found:
        # each in a transaction of its own: an error ends the transaction
        with store.transaction() as connection:
            try:
                connection.execute(
                    text("SELECT bt_index_check(CAST(:index AS oid)::regclass)"),
                    {"index": oid},
                )
            except DBAPIError as err:
                sqlstate = getattr(err.orig, "sqlstate", None)
                if sqlstate == _NOT_ALLOWED:
                    findings.notes.append(
                        "PostgreSQL's indexes were not checked: this role may not"
                        " run amcheck's bt_index_check"
                    )
                    return
                if sqlstate not in _CORRUPT:
                    raise storage_error(store.engine.url, err, doing="read") from err
                findings.add(
                    Problem(
                        "integrity",
                        f"index {name}: {' '.join(str(err.orig).split())}"
                        " (amcheck bt_index_check)",
                    )
                )
