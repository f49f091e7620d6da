"""Say what snapshot_node.wallclock_time counts from: muscle_manager's start.

The column comment said "since the instance started". MUSCLE3's wallclock time is
the elapsed time since ``muscle_manager`` started: every instance gets the
manager's elapsed time when it starts and counts on from there, so that one clock
serves all instances (MUSCLE3's checkpointing documentation: wallclock checkpoint
times are "seconds since the initialization of muscle_manager"). Only the comment
changes, and only where the database keeps comments (PostgreSQL); elsewhere this
revision does nothing.

Revision ID: 0004_wallclock_comment
Revises: 0003_deleted_snapshot_file
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_wallclock_comment"
down_revision: str | None = "0003_deleted_snapshot_file"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_COMMENT = "Seconds since the instance started."
NEW_COMMENT = "Seconds since muscle_manager started (elapsed wallclock time)."


def _set_comment(comment: str, previous: str) -> None:
    if not op.get_context().dialect.supports_comments:
        return  # SQLite keeps no comments
    op.alter_column(
        "snapshot_node",
        "wallclock_time",
        existing_type=sa.Double(),
        existing_nullable=False,
        comment=comment,
        existing_comment=previous,
    )


def upgrade() -> None:
    _set_comment(NEW_COMMENT, OLD_COMMENT)


def downgrade() -> None:
    _set_comment(OLD_COMMENT, NEW_COMMENT)
