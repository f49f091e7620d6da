"""Record how long the writer of a run may be silent.

On SQLite a run's writer is judged gone when its heartbeat is older than its
timeout, and it heartbeats on a schedule made from that timeout (every quarter of
it, at most every 15 s). ``run.writer_timeout`` records the holder's own timeout,
so that an opener with a shorter one does not take over a holder between two of
its heartbeats, and readers judge a writer on another host by what it said
rather than by a fixed minute. NULL when no one writes the run, and for a lease
taken before this revision (judged by the opener's timeout, as before).

Revision ID: 0006_writer_timeout
Revises: 0005_restart_points
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_writer_timeout"
down_revision: str | None = "0005_restart_points"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "run",
        sa.Column(
            "writer_timeout",
            sa.Double(),
            nullable=True,
            comment="SQLite: seconds without a heartbeat after which the writer "
            "may be taken over, as the writer set it; NULL when no one writes, "
            "or for a lease taken before snapreg recorded it.",
        ),
    )


def downgrade() -> None:
    op.drop_column("run", "writer_timeout")
