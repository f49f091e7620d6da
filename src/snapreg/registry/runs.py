"""Campaigns and runs: opening one, continuing it or starting the next.

Opening a registry either continues a campaign's latest run (same topology, the
writer lease taken over from a holder that is gone) or creates a new run: its row,
its restart nodes (one per instance, num 1, with their edges) and the per-run
topology rows the SQL views use. Openers of one campaign take turns (SQLite's
write lock; a PostgreSQL advisory lock per campaign), so that processes started at
the same instant each find what the one before them did.

The right to write a run is the writer lease of :mod:`snapreg.registry.lease`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from snapreg.errors import (
    ConfigurationError,
    NotFoundError,
    TopologyMismatchError,
)
from snapreg.registry.lease import WriterLease, campaign_lock_key
from snapreg.rules.graph import POLICIES, ActiveGraph
from snapreg.rules.instances import split_instance
from snapreg.rules.metadata import restart_metadata, storable_text
from snapreg.rules.topology import Topology
from snapreg.storage import codecs, queries, schema, statements

# campaign.name is VARCHAR(255); row ids are 64-bit on PostgreSQL
MAX_CAMPAIGN_NAME_LENGTH = 255
MAX_ROW_ID = 2**63 - 1


class OpenedRunRows(NamedTuple):
    """The run :func:`open_run` opened.

    Attributes:
        campaign_id: The campaign's row id.
        run_id: The run's row id.
        number: The run's number in its campaign.
        graph: For a run it created, the active graph its rows hold (the restart
            nodes and their edges), built while writing them, so that it need not
            be read back; None for a run it continues.
    """

    campaign_id: int
    run_id: int
    number: int
    graph: ActiveGraph | None


def check_arguments(
    snapshot_folder: Any,
    topology_store: Any,
    *,
    database_url: Any,
    campaign: Any,
    new_run: Any,
    resumed_from: Any,
    upgrade: Any,
    writer_timeout: Any,
    policy: Any,
) -> None:
    """Refuse unusable registry arguments before anything touches the database.

    Raises:
        ConfigurationError: naming the argument.
    """
    if snapshot_folder is not None and not isinstance(
        snapshot_folder, (str, os.PathLike)
    ):
        raise ConfigurationError(
            f"snapshot_folder must be a path or None, not {snapshot_folder!r}"
        )
    if snapshot_folder is not None and not os.path.isdir(snapshot_folder):
        raise ConfigurationError(f"snapshot folder {snapshot_folder} does not exist")
    if policy not in POLICIES:
        raise ConfigurationError(
            f"policy must be one of {', '.join(POLICIES)}, not {policy!r}"
        )
    if database_url is not None and not (
        (isinstance(database_url, str) and database_url.strip())
        or isinstance(database_url, URL)
    ):
        # only None means "the default": an empty or mistyped URL is a mistake
        raise ConfigurationError(
            f"database_url must be a SQLAlchemy URL or None, not {database_url!r}"
        )
    if topology_store is not None and not callable(
        getattr(topology_store, "get_peer_instances", None)
    ):
        raise ConfigurationError("topology_store must have a get_peer_instances method")
    if campaign is not None and (
        not isinstance(campaign, str)
        or not campaign.strip()
        or len(campaign) > MAX_CAMPAIGN_NAME_LENGTH
        or not campaign.isprintable()
        or not storable_text(campaign)
    ):
        raise ConfigurationError(
            f"campaign must be printable text of 1 to {MAX_CAMPAIGN_NAME_LENGTH}"
            f" characters, not {str(campaign)[:80]!r}"
        )
    for name, flag in (("new_run", new_run), ("upgrade", upgrade)):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{name} must be True or False, not {flag!r}")
    if resumed_from is not None and (
        isinstance(resumed_from, bool)
        or not isinstance(resumed_from, int)
        or not 1 <= resumed_from <= MAX_ROW_ID
    ):
        raise ConfigurationError(
            f"resumed_from must be a workflow snapshot id, not {resumed_from!r}"
        )
    if (
        isinstance(writer_timeout, bool)
        or not isinstance(writer_timeout, (int, float))
        or not math.isfinite(writer_timeout)
        or writer_timeout <= 0
    ):
        raise ConfigurationError(
            "writer_timeout must be a positive number of seconds,"
            f" not {writer_timeout!r}"
        )


@dataclass(frozen=True)
class RunSetup:
    """What a registry brings to the run it opens."""

    campaign: str
    topology: Topology
    configuration_text: str
    folder: Path | None
    lease: WriterLease
    policy: str = "all"


def open_run(
    session: Session, setup: RunSetup, new_run: bool, resumed_from: int | None
) -> OpenedRunRows:
    """Continue the campaign's latest run, or create a new one, and take it.

    Raises:
        TopologyMismatchError: continuing a run made with another model.
        NotFoundError: ``resumed_from`` is not a workflow snapshot of the campaign.
        WriterConflictError: another live registry writes the run.
    """
    _openings_take_turns(session, setup.campaign)
    campaign = session.scalars(
        select(schema.CampaignRow).where(schema.CampaignRow.name == setup.campaign)
    ).one_or_none()
    if campaign is None:
        campaign = schema.CampaignRow(name=setup.campaign)
        session.add(campaign)
        session.flush()
    run = queries.latest_run(session, campaign.id)
    if run is not None and run.writer_token == setup.lease.token:
        # a retry after a commit whose answer was lost: the run is ours already,
        # but the lock may have gone with the connection
        setup.lease.acquire(session, run, setup.campaign)
        return OpenedRunRows(campaign.id, run.id, run.number, None)
    signature = setup.topology.signature()
    folder = None if setup.folder is None else str(setup.folder.resolve())
    # Another snapshot folder beside the last run's, which is still there, is
    # another manager start (MUSCLE3 gives each its own run directory), whose
    # instances start afresh: a new run, even when nothing can pass new_run
    # (MUSCLE3's manager building the registry itself). A folder that replaces one
    # that is gone is the same campaign moved: it goes on.
    another_start = (
        folder is not None
        and run is not None
        and run.snapshot_folder not in (None, folder)
        and os.path.isdir(run.snapshot_folder)
    )
    if run is None or new_run or another_start:
        if resumed_from is not None:
            _check_resumed_from(session, setup.campaign, campaign.id, resumed_from)
        run, graph = _create_run(
            session,
            setup,
            campaign.id,
            1 if run is None else run.number + 1,
            resumed_from,
        )
        setup.lease.acquire(session, run, setup.campaign)
        return OpenedRunRows(campaign.id, run.id, run.number, graph)
    if (
        resumed_from is not None
        and resumed_from != run.resumed_from_workflow_snapshot_id
    ):
        raise ConfigurationError(
            "resumed_from is only for a new run; pass new_run=True"
        )
    if run.topology != signature:
        raise TopologyMismatchError(
            f"campaign {setup.campaign!r} run {run.number} was made with a model"
            " whose components or conduits differ from this configuration; start a"
            " new run (new_run=True) or use another campaign"
        )
    if (run.policy or "all") != setup.policy:
        raise ConfigurationError(
            f"campaign {setup.campaign!r} run {run.number} materialises"
            f" {run.policy or 'all'} workflow snapshots, not {setup.policy}: its"
            " workflow snapshots must be derivable from its rows by one policy;"
            " start a new run (new_run=True) for another policy"
        )
    if run.policy is None:
        run.policy = setup.policy
    setup.lease.acquire(session, run, setup.campaign)
    if folder is not None and run.snapshot_folder != folder:
        run.snapshot_folder = folder
    return OpenedRunRows(campaign.id, run.id, run.number, None)


def open_run_on(
    connection: Connection, setup: RunSetup, new_run: bool, resumed_from: int | None
) -> OpenedRunRows:
    """:func:`open_run` in the transaction under way on a writer's connection.

    The registry opens its run on the connection it keeps for writing: on
    PostgreSQL that session then holds the run's lock for the registry's life.
    """
    with Session(bind=connection, expire_on_commit=False) as session:
        opened = open_run(session, setup, new_run, resumed_from)
        session.flush()
        return opened


def _openings_take_turns(session: Session, campaign: str) -> None:
    """Serialise the transactions that open runs of one campaign.

    Processes that open a campaign at the same instant then each see what the
    one before them did: the campaign it created, the run it numbered, the run it
    took. SQLite: the writer's ``BEGIN IMMEDIATE`` already does this.
    """
    if session.connection().dialect.name == "postgresql":
        space, key = campaign_lock_key(campaign)
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": space, "key": key},
        )


def _check_resumed_from(
    session: Session, campaign: str, campaign_id: int, workflow_snapshot_id: int
) -> None:
    found = session.execute(
        select(schema.WorkflowSnapshotRow.id)
        .join(schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id)
        .where(
            schema.WorkflowSnapshotRow.id == workflow_snapshot_id,
            schema.RunRow.campaign_id == campaign_id,
        )
    ).first()
    if found is None:
        raise NotFoundError(
            f"campaign {campaign!r} has no workflow snapshot {workflow_snapshot_id}"
            " to resume from"
        )


def _create_run(
    session: Session,
    setup: RunSetup,
    campaign_id: int,
    number: int,
    resumed_from: int | None,
) -> tuple[schema.RunRow, ActiveGraph]:
    """A new run with its restart nodes, their edges and its topology rows.

    Returns:
        The run, and the active graph of its rows.
    """
    now = datetime.now(timezone.utc)
    topology = setup.topology
    run = schema.RunRow(
        campaign_id=campaign_id,
        number=number,
        model_name=topology.model_name,
        topology=topology.signature(),
        configuration=setup.configuration_text,
        snapshot_folder=str(setup.folder.resolve()) if setup.folder else None,
        started_at=now,
        resumed_from_workflow_snapshot_id=resumed_from,
        policy=setup.policy,
    )
    session.add(run)
    session.flush()
    connection = session.connection()
    # Restart nodes first, as MUSCLE3 does: every instance may start afresh.
    graph = ActiveGraph(topology)
    values = codecs.node_row_values(restart_metadata())
    ids = statements.allocate_ids(connection, statements.NODE, len(topology.instances))
    connection.execute(
        insert(statements.NODE),
        [
            {
                "id": node_id,
                "run_id": run.id,
                "instance": instance,
                "num": 1,
                "is_restart": True,
                "registered_at": now,
                **values,
            }
            for node_id, instance in zip(ids, topology.instances, strict=True)
        ],
    )
    edges: list[dict[str, int]] = []
    for node_id, instance in zip(ids, topology.instances, strict=True):
        # each its own metadata, as when read from its row
        node = graph.new_node(node_id, instance, restart_metadata(), True)
        edges.extend(statements.edge_rows(node, graph.add(node)))
    if edges:
        connection.execute(statements.INSERT_EDGE, edges)
    _write_topology_rows(connection, topology, run.id)
    return run, graph


def _write_topology_rows(
    connection: Connection, topology: Topology, run_id: int
) -> None:
    """The per-run rows the SQL views use (docs/schema.md, migration 0002).

    The peers of every instance, and every conduit between two peers with the port
    and slot of each side whose counts must agree (NULL: every slot), from the same
    compiled rules the registry checks.
    """
    peer_rows = [
        {"run_id": run_id, "instance": instance, "peer_instance": peer}
        for instance in topology.instances
        for peer in sorted(topology.peers(instance))
    ]
    if peer_rows:
        connection.execute(insert(statements.INSTANCE_PEER), peer_rows)
    conduit_rows = [
        {
            "run_id": run_id,
            "sender_instance": sender,
            "receiver_instance": receiver,
            "conduit": f"{split_instance(sender)[0]}.{rule.own_port} ->"
            f" {split_instance(receiver)[0]}.{rule.peer_port}",
            "sending_port": rule.own_port,
            "sending_slot": rule.own_slot,
            "receiving_port": rule.peer_port,
            "receiving_slot": rule.peer_slot,
        }
        for sender in topology.instances
        for receiver in sorted(topology.peers(sender))
        for rule in topology.rules(sender, receiver)
        if rule.is_sending
    ]
    if conduit_rows:
        connection.execute(insert(statements.INSTANCE_CONDUIT), conduit_rows)
