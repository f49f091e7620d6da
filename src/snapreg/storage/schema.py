"""The rows: SQLAlchemy 2.0 typed ORM classes for snapreg's schema.

These classes know nothing of MUSCLE3. The schema is a user-facing interface (people
query it with ``sqlite3`` and ``psql``), so every table and column carries a comment,
and constraint names come from one naming convention so that they are the same on
SQLite and PostgreSQL. Only Alembic revisions in ``migrations/`` change the schema; a
test checks that these models and the revisions never drift apart.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Row ids: 64-bit on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")
#: The largest row id (a signed 64-bit integer on both backends).
MAX_ID = 2**63 - 1
#: The largest run number or num (a 32-bit INTEGER column on PostgreSQL).
MAX_NUMBER = 2**31 - 1


class Json(TypeDecorator[Any]):
    """JSON; stored as JSONB on PostgreSQL.

    A decorator rather than ``JSON().with_variant(JSONB(), ...)``: the variant
    imports PostgreSQL's dialect (2 MiB, 45 to 70 ms) with this module, on SQLite
    too. Here it is imported when a PostgreSQL engine first compiles or binds
    the type, by which time that engine has loaded the dialect anyway.
    """

    impl = JSON
    cache_ok = True
    #: as JSON's: the ORM stores a None as JSON null, not as SQL NULL
    should_evaluate_none = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends.

    SQLite has no time zones and hands back naive values; they are UTC because
    snapreg only ever stores UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            raise ValueError("snapreg stores only timezone-aware datetimes")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    """Now, in UTC; the default of every creation time."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Base class of snapreg's ORM classes."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CampaignRow(Base):
    """A named sequence of runs of one simulation."""

    __tablename__ = "campaign"
    __table_args__ = {"comment": "A named sequence of runs of one simulation."}

    id: Mapped[int] = mapped_column(Id, primary_key=True, comment="Row id.")
    name: Mapped[str] = mapped_column(
        String(255), unique=True, comment="Campaign name; defaults to the model name."
    )
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When the campaign was created (UTC)."
    )

    runs: Mapped[list[RunRow]] = relationship(
        back_populates="campaign", order_by="RunRow.number"
    )


class RunRow(Base):
    """One execution of the simulation: one manager start."""

    __tablename__ = "run"
    __table_args__ = (
        UniqueConstraint("campaign_id", "number"),
        {"comment": "One execution of the simulation (one manager start)."},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, comment="Row id.")
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), comment="The campaign."
    )
    number: Mapped[int] = mapped_column(
        Integer, comment="1 for the campaign's first run, then 2, 3, ..."
    )
    model_name: Mapped[str] = mapped_column(String(255), comment="Name of the model.")
    topology: Mapped[str] = mapped_column(
        Text,
        comment="Canonical JSON of the model's components, multiplicities and "
        "conduits; a run is only continued with the same topology.",
    )
    configuration: Mapped[str] = mapped_column(
        Text, comment="The run's configuration as yMMSL text, for the record."
    )
    snapshot_folder: Mapped[str | None] = mapped_column(
        Text, comment="Folder the workflow snapshot files of this run are written to."
    )
    started_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When the run was created (UTC)."
    )
    resumed_from_workflow_snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey(
            "workflow_snapshot.id",
            ondelete="SET NULL",
            use_alter=True,
        ),
        comment="The workflow snapshot this run resumed from; NULL if from scratch.",
    )
    writer_host: Mapped[str | None] = mapped_column(
        String(255), comment="Host of the process that holds the right to write."
    )
    writer_pid: Mapped[int | None] = mapped_column(
        Integer, comment="Process id of the writer on writer_host."
    )
    writer_token: Mapped[str | None] = mapped_column(
        String(64), comment="Random token of the writer; NULL when no one writes."
    )
    writer_since: Mapped[datetime | None] = mapped_column(
        UtcDateTime, comment="Since when the writer holds the run (UTC)."
    )
    writer_heartbeat_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime, comment="Last sign of life of the writer (UTC)."
    )
    writer_timeout: Mapped[float | None] = mapped_column(
        Double,
        comment="SQLite: seconds without a heartbeat after which the writer "
        "may be taken over, as the writer set it; NULL when no one writes, "
        "or for a lease taken before snapreg recorded it.",
    )
    policy: Mapped[str | None] = mapped_column(
        String(16),
        comment="Which workflow snapshots the run materialises: all or "
        "latest; NULL for runs made before snapreg recorded it (all).",
    )

    campaign: Mapped[CampaignRow] = relationship(back_populates="runs")


class SubmissionRow(Base):
    """A registration acknowledged to an instance, before and after processing."""

    __tablename__ = "submission"
    __table_args__ = {
        "comment": "Registrations acknowledged through register_snapshot; the node "
        "with this submission_id is its processed form."
    }

    id: Mapped[int] = mapped_column(
        Id, primary_key=True, comment="Row id; the processing order within a run."
    )
    run_id: Mapped[int] = mapped_column(
        ForeignKey("run.id", ondelete="CASCADE"), index=True, comment="The run."
    )
    instance: Mapped[str] = mapped_column(
        String(255), comment="Instance that reported the snapshot, e.g. micro[3]."
    )
    snapshot_metadata: Mapped[dict[str, Any]] = mapped_column(
        Json, comment="The metadata as reported (SnapshotMetadata fields)."
    )
    submitted_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When it was acknowledged (UTC)."
    )


class SnapshotNodeRow(Base):
    """One snapshot of one instance in one run, or a restart node."""

    __tablename__ = "snapshot_node"
    __table_args__ = (
        UniqueConstraint("run_id", "instance", "num"),
        Index("ix_snapshot_node_run_id_retired_at", "run_id", "retired_at"),
        {"comment": "Snapshots of instances; retired ones stay as history."},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, comment="Row id.")
    run_id: Mapped[int] = mapped_column(
        ForeignKey("run.id", ondelete="CASCADE"), comment="The run."
    )
    instance: Mapped[str] = mapped_column(
        String(255), comment="The instance, e.g. macro or micro[3]."
    )
    num: Mapped[int] = mapped_column(
        Integer, comment="1 for the restart node, then 2, 3, ... per instance and run."
    )
    is_restart: Mapped[bool] = mapped_column(
        Boolean, comment="True for the placeholder 'restart from scratch' node."
    )
    triggers: Mapped[list[str]] = mapped_column(
        Json, comment="JSON list of the reasons the snapshot was taken."
    )
    wallclock_time: Mapped[float] = mapped_column(
        Double,
        comment="Seconds since muscle_manager started (elapsed wallclock time).",
    )
    simulation_time: Mapped[float | None] = mapped_column(
        Double, comment="Simulation time of the snapshot; NULL when it has none (NaN)."
    )
    next_simulation_time: Mapped[float | None] = mapped_column(
        Double, comment="Simulation time of the next step; NULL if unknown."
    )
    port_message_counts: Mapped[dict[str, list[int]]] = mapped_column(
        Json, comment="JSON object: port name to list of message counts per slot."
    )
    is_final: Mapped[bool] = mapped_column(
        Boolean, comment="True for a final snapshot (end of a reuse iteration)."
    )
    snapshot_filename: Mapped[str] = mapped_column(
        Text, comment="File the instance saved; empty for a restart node."
    )
    snapshot_file_size: Mapped[int | None] = mapped_column(
        BigInteger,
        comment="Size in bytes of the instance's snapshot file when it was "
        "registered; NULL if the manager could not see it, or registered "
        "before snapreg recorded sizes.",
    )
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submission.id", ondelete="SET NULL"),
        unique=True,
        comment="The submission this node was made from; NULL for add_snapshot "
        "and restart nodes.",
    )
    registered_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When the node was created (UTC)."
    )
    retired_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime,
        comment="When a newer workflow snapshot made it obsolete; NULL while active.",
    )


class ConsistentPairRow(Base):
    """Two snapshot nodes of peer instances that are consistent: an edge."""

    __tablename__ = "consistent_pair"
    __table_args__ = (
        Index("ix_consistent_pair_higher_node_id", "higher_node_id"),
        {"comment": "Edges of the snapshot graph, stored once (lower id first)."},
    )

    lower_node_id: Mapped[int] = mapped_column(
        ForeignKey("snapshot_node.id", ondelete="CASCADE"),
        primary_key=True,
        comment="The node with the lower id.",
    )
    higher_node_id: Mapped[int] = mapped_column(
        ForeignKey("snapshot_node.id", ondelete="CASCADE"),
        primary_key=True,
        comment="The node with the higher id.",
    )


class WorkflowSnapshotRow(Base):
    """A set of one node per instance, pairwise consistent: a safe restart point."""

    __tablename__ = "workflow_snapshot"
    __table_args__ = {"comment": "Consistent sets of snapshots, one yMMSL file each."}

    id: Mapped[int] = mapped_column(Id, primary_key=True, comment="Row id.")
    run_id: Mapped[int] = mapped_column(
        ForeignKey("run.id", ondelete="CASCADE"), index=True, comment="The run."
    )
    path: Mapped[str] = mapped_column(
        Text, unique=True, comment="Absolute path of its yMMSL file."
    )
    description: Mapped[str] = mapped_column(
        Text, comment="The human-readable description written into the file."
    )
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When it was found (UTC)."
    )

    members: Mapped[list[WorkflowSnapshotMemberRow]] = relationship(
        back_populates="workflow_snapshot"
    )


class WorkflowSnapshotMemberRow(Base):
    """One node of a workflow snapshot."""

    __tablename__ = "workflow_snapshot_member"
    __table_args__ = (
        Index("ix_workflow_snapshot_member_snapshot_node_id", "snapshot_node_id"),
        {"comment": "Which snapshot node each workflow snapshot holds per instance."},
    )

    workflow_snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("workflow_snapshot.id", ondelete="CASCADE"),
        primary_key=True,
        comment="The workflow snapshot.",
    )
    snapshot_node_id: Mapped[int] = mapped_column(
        ForeignKey("snapshot_node.id", ondelete="CASCADE"),
        primary_key=True,
        comment="A member node.",
    )

    workflow_snapshot: Mapped[WorkflowSnapshotRow] = relationship(
        back_populates="members"
    )
    snapshot_node: Mapped[SnapshotNodeRow] = relationship()


class InstancePeerRow(Base):
    """One peer of one instance in one run: the instances it shares a conduit with."""

    __tablename__ = "instance_peer"
    __table_args__ = {
        "comment": "The peers of every instance of a run, stored in both directions; "
        "written with the run so that SQL can tell whether a node is locally "
        "consistent."
    }

    run_id: Mapped[int] = mapped_column(
        ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, comment="The run."
    )
    instance: Mapped[str] = mapped_column(
        String(255), primary_key=True, comment="The instance, e.g. macro."
    )
    peer_instance: Mapped[str] = mapped_column(
        String(255),
        primary_key=True,
        comment="An instance it shares a conduit with, e.g. micro[3].",
    )


class InstanceConduitRow(Base):
    """One conduit between two peer instances of a run, with the counts it compares."""

    __tablename__ = "instance_conduit"
    __table_args__ = {
        "comment": "Every conduit between two peer instances of a run: which port "
        "and slot of the sender's message counts must agree with which port and slot "
        "of the receiver's. Written with the run."
    }

    run_id: Mapped[int] = mapped_column(
        ForeignKey("run.id", ondelete="CASCADE"), primary_key=True, comment="The run."
    )
    sender_instance: Mapped[str] = mapped_column(
        String(255), primary_key=True, comment="The instance that sends, e.g. macro."
    )
    receiver_instance: Mapped[str] = mapped_column(
        String(255),
        primary_key=True,
        comment="The instance that receives, e.g. micro[3].",
    )
    conduit: Mapped[str] = mapped_column(
        String(511),
        primary_key=True,
        comment="The conduit between their components, as 'sender.port -> "
        "receiver.port', e.g. 'macro.state_out -> micro.init_in'.",
    )
    sending_port: Mapped[str] = mapped_column(
        String(255), comment="Port of the sender, a key of its port_message_counts."
    )
    sending_slot: Mapped[int | None] = mapped_column(
        Integer,
        comment="Slot of the sending port whose count is compared; NULL when every "
        "slot is compared with the same slot of the receiving port.",
    )
    receiving_port: Mapped[str] = mapped_column(
        String(255), comment="Port of the receiver, a key of its port_message_counts."
    )
    receiving_slot: Mapped[int | None] = mapped_column(
        Integer,
        comment="Slot of the receiving port whose count is compared; NULL when every "
        "slot is compared with the same slot of the sending port.",
    )


class DeletedSnapshotFileRow(Base):
    """An instance snapshot file that ``snapreg gc`` deleted: what, when and why.

    Written by :mod:`snapreg.tools.gc_delete`, not by the registry: the nodes that
    named the file stay as history, and this row says the file is gone.
    """

    __tablename__ = "deleted_snapshot_file"
    __table_args__ = {
        "comment": "Instance snapshot files deleted by snapreg gc, with when and why."
    }

    id: Mapped[int] = mapped_column(Id, primary_key=True, comment="Row id.")
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"),
        index=True,
        comment="The campaign whose garbage collection deleted it.",
    )
    snapshot_node_id: Mapped[int | None] = mapped_column(
        ForeignKey("snapshot_node.id", ondelete="SET NULL"),
        index=True,
        comment="The snapshot node whose file it was; NULL once that node's row is "
        "gone.",
    )
    path: Mapped[str] = mapped_column(
        Text, comment="Absolute path of the deleted file, as the node named it."
    )
    bytes: Mapped[int] = mapped_column(
        BigInteger, comment="Size of the file when it was deleted."
    )
    deleted_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, comment="When it was deleted (UTC)."
    )
    reason: Mapped[str] = mapped_column(
        Text, comment="Why it was deleted, e.g. the snapreg gc --keep setting."
    )
