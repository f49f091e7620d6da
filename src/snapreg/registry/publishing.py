"""What the registry hands back and puts right: public values, lost files rewritten.

:func:`publish` turns what a processed registration found into the public
:class:`~snapreg.rules.snapshot.WorkflowSnapshot` values ``add_snapshot``
returns; :func:`recover_missing_files` writes, when a run is opened, the files of
workflow snapshots whose rows committed but whose files never got written (a
crash, a full disk).
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from snapreg.registry.batch_writer import Outcome
from snapreg.registry.files import FileWriter
from snapreg.registry.store import OpenedRun, RunStore
from snapreg.rules.graph import GraphNode
from snapreg.rules.instances import instance_sort_key
from snapreg.rules.snapshot import SnapshotNode, WorkflowSnapshot
from snapreg.storage import queries, schema

_logger = logging.getLogger(__name__)

# SQLite accepts 32766 bound parameters per statement; stay well below.
_IN_LIST_CHUNK = 10_000


def publish(run: OpenedRun, outcome: Outcome) -> list[WorkflowSnapshot]:
    """The workflow snapshots a processed registration completed, as values."""
    result = []
    for item in outcome.found:
        nodes = tuple(
            _public_node(run, node)
            for node in sorted(item.nodes, key=lambda n: instance_sort_key(n.instance))
        )
        result.append(
            WorkflowSnapshot(
                id=item.id,
                campaign=run.campaign,
                run=run.number,
                nodes=nodes,
                path=item.path.resolve() if item.path is not None else None,
                created_at=outcome.created_at,
                description=item.description,
            )
        )
    return result


def recover_missing_files(store: RunStore, files: FileWriter) -> None:
    """Write the file of every workflow snapshot row of the campaign that lacks it.

    Its rows committed, its file did not get written (a crash, a full disk): the
    file is written now, when its folder is there.
    """
    run = store.opened()

    def missing(session: Session) -> list[WorkflowSnapshot]:
        rows = session.execute(
            select(schema.WorkflowSnapshotRow.id, schema.WorkflowSnapshotRow.path)
            .join(schema.RunRow, schema.RunRow.id == schema.WorkflowSnapshotRow.run_id)
            .where(schema.RunRow.campaign_id == run.campaign_id)
        ).all()
        lost = [
            row.id
            for row in rows
            if not os.path.exists(row.path) and os.path.isdir(os.path.dirname(row.path))
        ]
        found: list[WorkflowSnapshot] = []
        for chunk in queries.chunks(lost, _IN_LIST_CHUNK):
            found.extend(
                queries.workflow_snapshots(
                    session, run.campaign_id, run.campaign, ids=chunk
                )
            )
        return found

    for snapshot in store.read(missing):
        assert snapshot.path is not None
        _logger.warning("Rewriting missing workflow snapshot file %s", snapshot.path)
        files.write_workflow_snapshot(
            snapshot.path, snapshot.resume_files, snapshot.description
        )


def _public_node(run: OpenedRun, node: GraphNode) -> SnapshotNode:
    return SnapshotNode(
        num=node.num,
        instance=queries.reference(node.instance),
        snapshot=node.metadata,
        peers=frozenset(queries.reference(peer) for peer in node.peers),
        id=node.id,
        is_restart=node.is_restart,
        run=run.number,
    )
