"""Initial schema: campaigns, runs, submissions, snapshot nodes, edges, workflow snapshots.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revisions spell their types out instead of importing snapreg.storage.schema, so that a
# later change to the models can never rewrite history.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC_TIME = sa.DateTime(timezone=True)


def _id(comment: str = "Row id.") -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", ID, nullable=False, comment=comment)


def upgrade() -> None:
    op.create_table(
        "campaign",
        _id(),
        sa.Column("name", sa.String(255), nullable=False,
                  comment="Campaign name; defaults to the model name."),
        sa.Column("created_at", UTC_TIME, nullable=False,
                  comment="When the campaign was created (UTC)."),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign")),
        sa.UniqueConstraint("name", name=op.f("uq_campaign_name")),
        comment="A named sequence of runs of one simulation.",
    )
    op.create_table(
        "run",
        _id(),
        sa.Column("campaign_id", ID, nullable=False, comment="The campaign."),
        sa.Column("number", sa.Integer(), nullable=False,
                  comment="1 for the campaign's first run, then 2, 3, ..."),
        sa.Column("model_name", sa.String(255), nullable=False,
                  comment="Name of the model."),
        sa.Column("topology", sa.Text(), nullable=False,
                  comment="Canonical JSON of the model's components, multiplicities "
                  "and conduits; a run is only continued with the same topology."),
        sa.Column("configuration", sa.Text(), nullable=False,
                  comment="The run's configuration as yMMSL text, for the record."),
        sa.Column("snapshot_folder", sa.Text(), nullable=True,
                  comment="Folder the workflow snapshot files of this run are "
                  "written to."),
        sa.Column("started_at", UTC_TIME, nullable=False,
                  comment="When the run was created (UTC)."),
        sa.Column("resumed_from_workflow_snapshot_id", ID, nullable=True,
                  comment="The workflow snapshot this run resumed from; NULL if "
                  "from scratch."),
        sa.Column("writer_host", sa.String(255), nullable=True,
                  comment="Host of the process that holds the right to write."),
        sa.Column("writer_pid", sa.Integer(), nullable=True,
                  comment="Process id of the writer on writer_host."),
        sa.Column("writer_token", sa.String(64), nullable=True,
                  comment="Random token of the writer; NULL when no one writes."),
        sa.Column("writer_since", UTC_TIME, nullable=True,
                  comment="Since when the writer holds the run (UTC)."),
        sa.Column("writer_heartbeat_at", UTC_TIME, nullable=True,
                  comment="Last sign of life of the writer (UTC)."),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"],
                                name=op.f("fk_run_campaign_id_campaign"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
        sa.UniqueConstraint("campaign_id", "number",
                            name=op.f("uq_run_campaign_id_number")),
        comment="One execution of the simulation (one manager start).",
    )
    op.create_table(
        "submission",
        _id("Row id; the processing order within a run."),
        sa.Column("run_id", ID, nullable=False, comment="The run."),
        sa.Column("instance", sa.String(255), nullable=False,
                  comment="Instance that reported the snapshot, e.g. micro[3]."),
        sa.Column("snapshot_metadata", JSON, nullable=False,
                  comment="The metadata as reported (SnapshotMetadata fields)."),
        sa.Column("submitted_at", UTC_TIME, nullable=False,
                  comment="When it was acknowledged (UTC)."),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"],
                                name=op.f("fk_submission_run_id_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submission")),
        comment="Registrations acknowledged through register_snapshot; the node "
        "with this submission_id is its processed form.",
    )
    op.create_index(op.f("ix_submission_run_id"), "submission", ["run_id"])
    op.create_table(
        "workflow_snapshot",
        _id(),
        sa.Column("run_id", ID, nullable=False, comment="The run."),
        sa.Column("path", sa.Text(), nullable=False,
                  comment="Absolute path of its yMMSL file."),
        sa.Column("description", sa.Text(), nullable=False,
                  comment="The human-readable description written into the file."),
        sa.Column("created_at", UTC_TIME, nullable=False,
                  comment="When it was found (UTC)."),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"],
                                name=op.f("fk_workflow_snapshot_run_id_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_snapshot")),
        sa.UniqueConstraint("path", name=op.f("uq_workflow_snapshot_path")),
        comment="Consistent sets of snapshots, one yMMSL file each.",
    )
    op.create_index(op.f("ix_workflow_snapshot_run_id"), "workflow_snapshot", ["run_id"])
    op.create_table(
        "snapshot_node",
        _id(),
        sa.Column("run_id", ID, nullable=False, comment="The run."),
        sa.Column("instance", sa.String(255), nullable=False,
                  comment="The instance, e.g. macro or micro[3]."),
        sa.Column("num", sa.Integer(), nullable=False,
                  comment="1 for the restart node, then 2, 3, ... per instance and "
                  "run."),
        sa.Column("is_restart", sa.Boolean(), nullable=False,
                  comment="True for the placeholder 'restart from scratch' node."),
        sa.Column("triggers", JSON, nullable=False,
                  comment="JSON list of the reasons the snapshot was taken."),
        sa.Column("wallclock_time", sa.Double(), nullable=False,
                  comment="Seconds since the instance started."),
        sa.Column("simulation_time", sa.Double(), nullable=True,
                  comment="Simulation time of the snapshot; NULL when it has none "
                  "(NaN)."),
        sa.Column("next_simulation_time", sa.Double(), nullable=True,
                  comment="Simulation time of the next step; NULL if unknown."),
        sa.Column("port_message_counts", JSON, nullable=False,
                  comment="JSON object: port name to list of message counts per "
                  "slot."),
        sa.Column("is_final", sa.Boolean(), nullable=False,
                  comment="True for a final snapshot (end of a reuse iteration)."),
        sa.Column("snapshot_filename", sa.Text(), nullable=False,
                  comment="File the instance saved; empty for a restart node."),
        sa.Column("submission_id", ID, nullable=True,
                  comment="The submission this node was made from; NULL for "
                  "add_snapshot and restart nodes."),
        sa.Column("registered_at", UTC_TIME, nullable=False,
                  comment="When the node was created (UTC)."),
        sa.Column("retired_at", UTC_TIME, nullable=True,
                  comment="When a newer workflow snapshot made it obsolete; NULL "
                  "while active."),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"],
                                name=op.f("fk_snapshot_node_run_id_run"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["submission_id"], ["submission.id"],
                                name=op.f("fk_snapshot_node_submission_id_submission"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshot_node")),
        sa.UniqueConstraint("run_id", "instance", "num",
                            name=op.f("uq_snapshot_node_run_id_instance_num")),
        sa.UniqueConstraint("submission_id",
                            name=op.f("uq_snapshot_node_submission_id")),
        comment="Snapshots of instances; retired ones stay as history.",
    )
    op.create_index("ix_snapshot_node_run_id_retired_at", "snapshot_node",
                    ["run_id", "retired_at"])
    op.create_table(
        "consistent_pair",
        sa.Column("lower_node_id", ID, nullable=False,
                  comment="The node with the lower id."),
        sa.Column("higher_node_id", ID, nullable=False,
                  comment="The node with the higher id."),
        sa.ForeignKeyConstraint(
            ["higher_node_id"], ["snapshot_node.id"],
            name=op.f("fk_consistent_pair_higher_node_id_snapshot_node"),
            ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["lower_node_id"], ["snapshot_node.id"],
            name=op.f("fk_consistent_pair_lower_node_id_snapshot_node"),
            ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("lower_node_id", "higher_node_id",
                                name=op.f("pk_consistent_pair")),
        comment="Edges of the snapshot graph, stored once (lower id first).",
    )
    op.create_index("ix_consistent_pair_higher_node_id", "consistent_pair",
                    ["higher_node_id"])
    op.create_table(
        "workflow_snapshot_member",
        sa.Column("workflow_snapshot_id", ID, nullable=False,
                  comment="The workflow snapshot."),
        sa.Column("snapshot_node_id", ID, nullable=False, comment="A member node."),
        sa.ForeignKeyConstraint(
            ["snapshot_node_id"], ["snapshot_node.id"],
            name=op.f("fk_workflow_snapshot_member_snapshot_node_id_snapshot_node"),
            ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["workflow_snapshot_id"], ["workflow_snapshot.id"],
            name=op.f(
                "fk_workflow_snapshot_member_workflow_snapshot_id_workflow_snapshot"),
            ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workflow_snapshot_id", "snapshot_node_id",
                                name=op.f("pk_workflow_snapshot_member")),
        comment="Which snapshot node each workflow snapshot holds per instance.",
    )
    op.create_index("ix_workflow_snapshot_member_snapshot_node_id",
                    "workflow_snapshot_member", ["snapshot_node_id"])
    # run and workflow_snapshot refer to each other; the second link is added once
    # both tables exist (batch mode rebuilds the table on SQLite).
    with op.batch_alter_table("run") as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_run_resumed_from_workflow_snapshot_id_workflow_snapshot"),
            "workflow_snapshot", ["resumed_from_workflow_snapshot_id"], ["id"],
            ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("run") as batch_op:
        batch_op.drop_constraint(
            op.f("fk_run_resumed_from_workflow_snapshot_id_workflow_snapshot"),
            type_="foreignkey")
    op.drop_table("workflow_snapshot_member")
    op.drop_table("consistent_pair")
    op.drop_table("snapshot_node")
    op.drop_table("workflow_snapshot")
    op.drop_table("submission")
    op.drop_table("run")
    op.drop_table("campaign")
