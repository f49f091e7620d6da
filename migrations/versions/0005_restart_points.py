"""Record what each instance snapshot file was, and each run's policy.

A restart point is only as good as its files. ``snapshot_node.snapshot_file_size``
is the size of the instance's snapshot file when it was registered (a ``stat`` by
the manager; NULL when the manager could not see the file, and for nodes
registered before this revision, which are then judged by the file's existence
only). ``run.policy`` is which workflow snapshots the run materialised (``all`` or
``latest``), so that they can be derived again from the rows; NULL for runs made
before this revision, which all used ``all``.

Revision ID: 0005_restart_points
Revises: 0004_wallclock_comment
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_restart_points"
down_revision: str | None = "0004_wallclock_comment"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "snapshot_node",
        sa.Column(
            "snapshot_file_size",
            sa.BigInteger(),
            nullable=True,
            comment="Size in bytes of the instance's snapshot file when it was "
            "registered; NULL if the manager could not see it, or registered "
            "before snapreg recorded sizes.",
        ),
    )
    op.add_column(
        "run",
        sa.Column(
            "policy",
            sa.String(16),
            nullable=True,
            comment="Which workflow snapshots the run materialises: all or "
            "latest; NULL for runs made before snapreg recorded it (all).",
        ),
    )


def downgrade() -> None:
    op.drop_column("run", "policy")
    op.drop_column("snapshot_node", "snapshot_file_size")
