"""Snapshot history in plain SQL: per-run topology rows and views for users.

Two tables, written with every new run and filled here for the runs that exist:

* ``instance_peer``: the peers of every instance, so that a view can tell whether
  a node is locally consistent;
* ``instance_conduit``: every conduit between two peer instances, with the port
  and slot of each side whose message counts must agree, so that SQL can say which
  conduit breaks consistency.

Views, with the same names, columns and meaning on SQLite and PostgreSQL (only the
SQL that unnests JSON differs): ``snapshot_node_overview``,
``workflow_snapshot_member_overview``, ``run_lineage``, ``snapshot_message_count``
and ``snapshot_trigger``. docs/schema.md describes them.

Revision ID: 0002_views_and_topology
Revises: 0001_initial
Create Date: 2026-11-28
"""

import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002_views_and_topology"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_logger = logging.getLogger(__name__)

# As in 0001: types spelled out, no import of snapreg.storage.schema.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Whether a node has, for every peer of its instance, an edge to an active node of
# that peer. Edges are stored once (lower id first), so both sides are searched.
_LOCALLY_CONSISTENT = """
    NOT EXISTS (
        SELECT 1
        FROM instance_peer AS peer
        WHERE peer.run_id = node.run_id
          AND peer.instance = node.instance
          AND NOT EXISTS (
              SELECT 1
              FROM consistent_pair AS edge
              JOIN snapshot_node AS other ON other.id = edge.higher_node_id
              WHERE edge.lower_node_id = node.id
                AND other.instance = peer.peer_instance
                AND other.retired_at IS NULL
          )
          AND NOT EXISTS (
              SELECT 1
              FROM consistent_pair AS edge
              JOIN snapshot_node AS other ON other.id = edge.lower_node_id
              WHERE edge.higher_node_id = node.id
                AND other.instance = peer.peer_instance
                AND other.retired_at IS NULL
          )
    )"""

# The component of an instance: its name up to the first '['.
_COMPONENT = {
    "sqlite": "CASE WHEN instr(node.instance, '[') > 0"
    " THEN substr(node.instance, 1, instr(node.instance, '[') - 1)"
    " ELSE node.instance END",
    "postgresql": "split_part(node.instance, '[', 1)",
}

_SNAPSHOT_NODE_OVERVIEW = """
CREATE VIEW snapshot_node_overview AS
SELECT
    node.id AS snapshot_node_id,
    campaign.id AS campaign_id,
    campaign.name AS campaign_name,
    run.id AS run_id,
    run.number AS run_number,
    node.instance AS instance,
    {component} AS component,
    node.num AS num,
    node.is_restart AS is_restart,
    node.is_final AS is_final,
    node.triggers AS triggers,
    node.simulation_time AS simulation_time,
    node.next_simulation_time AS next_simulation_time,
    node.wallclock_time AS wallclock_time,
    node.snapshot_filename AS snapshot_filename,
    node.registered_at AS registered_at,
    node.retired_at AS retired_at,
    node.retired_at IS NULL AS is_active,
    {locally_consistent} AS is_locally_consistent,
    (
        SELECT count(*)
        FROM workflow_snapshot_member AS member
        WHERE member.snapshot_node_id = node.id
    ) AS workflow_snapshot_count
FROM snapshot_node AS node
JOIN run ON run.id = node.run_id
JOIN campaign ON campaign.id = run.campaign_id
"""

_WORKFLOW_SNAPSHOT_MEMBER_OVERVIEW = """
CREATE VIEW workflow_snapshot_member_overview AS
SELECT
    workflow_snapshot.id AS workflow_snapshot_id,
    workflow_snapshot.path AS workflow_snapshot_path,
    workflow_snapshot.created_at AS workflow_snapshot_created_at,
    campaign.id AS campaign_id,
    campaign.name AS campaign_name,
    run.id AS run_id,
    run.number AS run_number,
    node.id AS snapshot_node_id,
    node.instance AS instance,
    node.num AS num,
    node.is_restart AS is_restart,
    node.is_final AS is_final,
    node.simulation_time AS simulation_time,
    node.wallclock_time AS wallclock_time,
    node.snapshot_filename AS snapshot_filename
FROM workflow_snapshot_member AS member
JOIN workflow_snapshot ON workflow_snapshot.id = member.workflow_snapshot_id
JOIN snapshot_node AS node ON node.id = member.snapshot_node_id
JOIN run ON run.id = workflow_snapshot.run_id
JOIN campaign ON campaign.id = run.campaign_id
"""

# Lineage is walked down from the runs that started from scratch; CAST(... AS
# TEXT) and || mean the same on both backends.
_RUN_LINEAGE = """
CREATE VIEW run_lineage AS
WITH RECURSIVE descent(run_id, origin_run_id, generation, lineage) AS (
    SELECT run.id, run.id, 0, CAST(run.number AS TEXT)
    FROM run
    WHERE run.resumed_from_workflow_snapshot_id IS NULL
    UNION ALL
    SELECT
        child.id,
        descent.origin_run_id,
        descent.generation + 1,
        descent.lineage || ' > ' || CAST(child.number AS TEXT)
    FROM descent
    JOIN workflow_snapshot AS resumed ON resumed.run_id = descent.run_id
    JOIN run AS child ON child.resumed_from_workflow_snapshot_id = resumed.id
)
SELECT
    run.id AS run_id,
    campaign.id AS campaign_id,
    campaign.name AS campaign_name,
    run.number AS run_number,
    run.model_name AS model_name,
    run.started_at AS started_at,
    run.snapshot_folder AS snapshot_folder,
    run.resumed_from_workflow_snapshot_id AS resumed_from_workflow_snapshot_id,
    resumed.path AS resumed_from_workflow_snapshot_path,
    parent.id AS resumed_from_run_id,
    parent.number AS resumed_from_run_number,
    origin.number AS origin_run_number,
    descent.generation AS generation,
    descent.lineage AS lineage
FROM run
JOIN campaign ON campaign.id = run.campaign_id
LEFT JOIN workflow_snapshot AS resumed
    ON resumed.id = run.resumed_from_workflow_snapshot_id
LEFT JOIN run AS parent ON parent.id = resumed.run_id
LEFT JOIN descent ON descent.run_id = run.id
LEFT JOIN run AS origin ON origin.id = descent.origin_run_id
"""

# One row per node, port and slot. SQLite numbers array elements from 0 in
# json_each's key; PostgreSQL's ordinality starts at 1.
_SNAPSHOT_MESSAGE_COUNT = {
    "sqlite": """
CREATE VIEW snapshot_message_count AS
SELECT
    node.id AS snapshot_node_id,
    node.run_id AS run_id,
    node.instance AS instance,
    node.num AS num,
    port.key AS port,
    CAST(slot.key AS INTEGER) AS slot,
    CAST(slot.value AS INTEGER) AS message_count
FROM snapshot_node AS node,
    json_each(node.port_message_counts) AS port,
    json_each(port.value) AS slot
""",
    "postgresql": """
CREATE VIEW snapshot_message_count AS
SELECT
    node.id AS snapshot_node_id,
    node.run_id AS run_id,
    node.instance AS instance,
    node.num AS num,
    port.key AS port,
    CAST(slot.ordinality - 1 AS INTEGER) AS slot,
    CAST(slot.value AS BIGINT) AS message_count
FROM snapshot_node AS node
CROSS JOIN LATERAL jsonb_each(node.port_message_counts) AS port(key, value)
CROSS JOIN LATERAL jsonb_array_elements(port.value)
    WITH ORDINALITY AS slot(value, ordinality)
""",
}

_SNAPSHOT_TRIGGER = {
    "sqlite": """
CREATE VIEW snapshot_trigger AS
SELECT
    node.id AS snapshot_node_id,
    node.run_id AS run_id,
    node.instance AS instance,
    node.num AS num,
    CAST(reason.key AS INTEGER) AS trigger_index,
    reason.value AS trigger_text
FROM snapshot_node AS node,
    json_each(node.triggers) AS reason
""",
    "postgresql": """
CREATE VIEW snapshot_trigger AS
SELECT
    node.id AS snapshot_node_id,
    node.run_id AS run_id,
    node.instance AS instance,
    node.num AS num,
    CAST(reason.ordinality - 1 AS INTEGER) AS trigger_index,
    reason.value AS trigger_text
FROM snapshot_node AS node
CROSS JOIN LATERAL jsonb_array_elements_text(node.triggers)
    WITH ORDINALITY AS reason(value, ordinality)
""",
}

#: Every view of this revision, in the order they are dropped.
VIEWS = (
    "snapshot_trigger",
    "snapshot_message_count",
    "run_lineage",
    "workflow_snapshot_member_overview",
    "snapshot_node_overview",
)


def upgrade() -> None:
    op.create_table(
        "instance_peer",
        sa.Column("run_id", ID, nullable=False, comment="The run."),
        sa.Column("instance", sa.String(255), nullable=False,
                  comment="The instance, e.g. macro."),
        sa.Column("peer_instance", sa.String(255), nullable=False,
                  comment="An instance it shares a conduit with, e.g. micro[3]."),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"],
                                name=op.f("fk_instance_peer_run_id_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "instance", "peer_instance",
                                name=op.f("pk_instance_peer")),
        comment="The peers of every instance of a run, stored in both directions; "
        "written with the run so that SQL can tell whether a node is locally "
        "consistent.",
    )
    op.create_table(
        "instance_conduit",
        sa.Column("run_id", ID, nullable=False, comment="The run."),
        sa.Column("sender_instance", sa.String(255), nullable=False,
                  comment="The instance that sends, e.g. macro."),
        sa.Column("receiver_instance", sa.String(255), nullable=False,
                  comment="The instance that receives, e.g. micro[3]."),
        sa.Column("conduit", sa.String(511), nullable=False,
                  comment="The conduit between their components, as 'sender.port "
                  "-> receiver.port', e.g. 'macro.state_out -> micro.init_in'."),
        sa.Column("sending_port", sa.String(255), nullable=False,
                  comment="Port of the sender, a key of its port_message_counts."),
        sa.Column("sending_slot", sa.Integer(), nullable=True,
                  comment="Slot of the sending port whose count is compared; NULL "
                  "when every slot is compared with the same slot of the receiving "
                  "port."),
        sa.Column("receiving_port", sa.String(255), nullable=False,
                  comment="Port of the receiver, a key of its port_message_counts."),
        sa.Column("receiving_slot", sa.Integer(), nullable=True,
                  comment="Slot of the receiving port whose count is compared; NULL "
                  "when every slot is compared with the same slot of the sending "
                  "port."),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"],
                                name=op.f("fk_instance_conduit_run_id_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "sender_instance", "receiver_instance",
                                "conduit", name=op.f("pk_instance_conduit")),
        comment="Every conduit between two peer instances of a run: which port and "
        "slot of the sender's message counts must agree with which port and slot of "
        "the receiver's. Written with the run.",
    )
    context = op.get_context()
    if not context.as_sql:
        _fill_topology_of_existing_runs(op.get_bind())
    dialect = context.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"snapreg's views are for SQLite and PostgreSQL, "
                                  f"not {dialect}")
    op.execute(_SNAPSHOT_NODE_OVERVIEW.format(
        component=_COMPONENT[dialect], locally_consistent=_LOCALLY_CONSISTENT))
    op.execute(_WORKFLOW_SNAPSHOT_MEMBER_OVERVIEW)
    op.execute(_RUN_LINEAGE)
    op.execute(_SNAPSHOT_MESSAGE_COUNT[dialect])
    op.execute(_SNAPSHOT_TRIGGER[dialect])


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("instance_conduit")
    op.drop_table("instance_peer")


# --------------------------------------------------------- runs made before 0002
#
# Their topology is in run.topology, the canonical JSON written since 0001:
# {"components": {name: multiplicity}, "conduits": [[sender, port, receiver,
# port], ...], "model": name}. Instances pair up as in MUSCLE3: index by index over
# the dimensions both components have, every index over the extra ones.

_run = sa.table("run", sa.column("id", ID), sa.column("topology", sa.Text()))
_instance_peer = sa.table(
    "instance_peer",
    sa.column("run_id", ID),
    sa.column("instance", sa.String()),
    sa.column("peer_instance", sa.String()),
)
_instance_conduit = sa.table(
    "instance_conduit",
    sa.column("run_id", ID),
    sa.column("sender_instance", sa.String()),
    sa.column("receiver_instance", sa.String()),
    sa.column("conduit", sa.String()),
    sa.column("sending_port", sa.String()),
    sa.column("sending_slot", sa.Integer()),
    sa.column("receiving_port", sa.String()),
    sa.column("receiving_slot", sa.Integer()),
)


def _fill_topology_of_existing_runs(connection: sa.Connection) -> None:
    for run_id, topology_text in connection.execute(
        sa.select(_run.c.id, _run.c.topology)
    ).all():
        try:
            topology = json.loads(topology_text)
            conduit_rows = list(_conduit_rows(run_id, topology))
        except (ValueError, KeyError, TypeError) as err:
            _logger.warning("Run %s has an unreadable topology (%s); its peers and "
                            "conduits stay unknown to the views", run_id, err)
            continue
        peers = {
            pair
            for row in conduit_rows
            for pair in ((row["sender_instance"], row["receiver_instance"]),
                         (row["receiver_instance"], row["sender_instance"]))
        }
        if peers:
            connection.execute(sa.insert(_instance_peer), [
                {"run_id": run_id, "instance": instance, "peer_instance": peer}
                for instance, peer in sorted(peers)
            ])
        if conduit_rows:
            connection.execute(sa.insert(_instance_conduit), conduit_rows)


def _conduit_rows(run_id: int, topology: dict[str, Any]) -> Iterator[dict[str, Any]]:
    dimensions = {name: list(sizes) for name, sizes in topology["components"].items()}
    for sender, sending_port, receiver, receiving_port in topology["conduits"]:
        if sender not in dimensions or receiver not in dimensions:
            continue
        sender_dims, receiver_dims = dimensions[sender], dimensions[receiver]
        shared = min(len(sender_dims), len(receiver_dims))
        for sender_index in itertools.product(*map(range, sender_dims)):
            for extra in itertools.product(*map(range, receiver_dims[shared:])):
                receiver_index = sender_index[:shared] + extra
                sending_slot: int | None = None
                receiving_slot: int | None = None
                if len(sender_dims) < len(receiver_dims):
                    sending_slot, receiving_slot = receiver_index[-1], 0
                elif len(sender_dims) > len(receiver_dims):
                    sending_slot, receiving_slot = 0, sender_index[-1]
                yield {
                    "run_id": run_id,
                    "sender_instance": _instance(sender, sender_index),
                    "receiver_instance": _instance(receiver, receiver_index),
                    "conduit": f"{sender}.{sending_port}"
                    f" -> {receiver}.{receiving_port}",
                    "sending_port": sending_port,
                    "sending_slot": sending_slot,
                    "receiving_port": receiving_port,
                    "receiving_slot": receiving_slot,
                }


def _instance(component: str, index: Sequence[int]) -> str:
    return component + "".join(f"[{position}]" for position in index)
