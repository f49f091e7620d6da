"""Record instance snapshot files that ``snapreg gc`` deleted, and when.

``snapreg gc`` deletes instance snapshot files (MUSCLE3's ``.pack`` files) that no
retained workflow snapshot needs. The nodes and workflow snapshots that named those
files stay in the database as history, so each deletion gets a row here: which
file, how many bytes, when, why, and the snapshot node it belonged to. Written by
``snapreg.tools.gc``, never by the registry.

Revision ID: 0003_deleted_snapshot_file
Revises: 0002_views_and_topology
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_deleted_snapshot_file"
down_revision: str | None = "0002_views_and_topology"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: types spelled out, no import of snapreg.storage.schema.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deleted_snapshot_file",
        sa.Column("id", ID, nullable=False, comment="Row id."),
        sa.Column("campaign_id", ID, nullable=False,
                  comment="The campaign whose garbage collection deleted it."),
        sa.Column("snapshot_node_id", ID, nullable=True,
                  comment="The snapshot node whose file it was; NULL once that "
                  "node's row is gone."),
        sa.Column("path", sa.Text(), nullable=False,
                  comment="Absolute path of the deleted file, as the node named it."),
        sa.Column("bytes", sa.BigInteger(), nullable=False,
                  comment="Size of the file when it was deleted."),
        sa.Column("deleted_at", UTC_TIME, nullable=False,
                  comment="When it was deleted (UTC)."),
        sa.Column("reason", sa.Text(), nullable=False,
                  comment="Why it was deleted, e.g. the snapreg gc --keep setting."),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaign.id"],
            name=op.f("fk_deleted_snapshot_file_campaign_id_campaign"),
            ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["snapshot_node_id"], ["snapshot_node.id"],
            name=op.f("fk_deleted_snapshot_file_snapshot_node_id_snapshot_node"),
            ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deleted_snapshot_file")),
        comment="Instance snapshot files deleted by snapreg gc, with when and why.",
    )
    op.create_index(op.f("ix_deleted_snapshot_file_campaign_id"),
                    "deleted_snapshot_file", ["campaign_id"])
    op.create_index(op.f("ix_deleted_snapshot_file_snapshot_node_id"),
                    "deleted_snapshot_file", ["snapshot_node_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deleted_snapshot_file_snapshot_node_id"),
                  table_name="deleted_snapshot_file")
    op.drop_index(op.f("ix_deleted_snapshot_file_campaign_id"),
                  table_name="deleted_snapshot_file")
    op.drop_table("deleted_snapshot_file")
