"""An explanation in words and as JSON: what ``snapreg explain`` prints.

The explanation itself (which peers block an instance's newest node, and on which
conduit, port and slot) is :func:`snapreg.tools.explain.explain`'s; this module
only renders it, for people (:func:`explanation_lines`) and for scripts
(:func:`explanation_json`).
"""

from __future__ import annotations

from typing import Any

from snapreg.tools.explain import (
    Explanation,
    InstanceExplanation,
    PeerExplanation,
)
from snapreg.tools.run_graph import RecordedNode


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    """The explanation as JSON for scripts (``snapreg explain --json``)."""
    newest_in_run = explanation.newest_in_run
    return {
        "campaign": explanation.campaign,
        "run": explanation.run,
        "runs": explanation.runs,
        "newest_workflow_snapshot": None
        if explanation.newest_in_campaign is None
        else {
            "id": explanation.newest_in_campaign[0],
            "run": explanation.newest_in_campaign[1],
        },
        "newest_workflow_snapshot_of_run": None
        if newest_in_run is None
        else {"id": newest_in_run[0], "members": newest_in_run[1]},
        "up_to_date": explanation.up_to_date,
        "stalled": [item.instance for item in explanation.stalled],
        "instances": [_instance_json(item) for item in explanation.instances],
    }


def _instance_json(item: InstanceExplanation) -> dict[str, Any]:
    node = item.node
    return {
        "instance": item.instance,
        "num": node.num,
        "is_restart": node.is_restart,
        "is_final": node.is_final,
        "simulation_time": node.simulation_time,
        "wallclock_time": None if node.is_restart else node.wallclock_time,
        "workflow_snapshot": item.workflow_snapshot,
        "snapshots_since_workflow_snapshot": item.snapshots_since,
        "locally_consistent": item.locally_consistent,
        "peers": [
            {
                "peer": peer.peer,
                "consistent_with": list(peer.consistent_with),
                "checked": [
                    {
                        "num": checked.num,
                        "is_restart": checked.is_restart,
                        "mismatches": [
                            mismatch.as_json() for mismatch in checked.mismatches
                        ],
                    }
                    for checked in peer.checked
                ],
                "not_shown": peer.not_shown,
            }
            for peer in item.peers
        ],
    }


def explanation_lines(explanation: Explanation) -> list[str]:
    """The explanation in plain words, one line per list item."""
    lines = [
        f"Campaign {explanation.campaign}, run {explanation.run} of {explanation.runs}."
    ]
    newest = explanation.newest_in_campaign
    if newest is None:
        lines.append("The campaign has no workflow snapshot yet.")
    elif explanation.newest_in_run is None:
        lines.append(
            f"This run has no workflow snapshot yet; the campaign's newest is"
            f" {newest[0]} (run {newest[1]})."
        )
    else:
        snapshot_id, members = explanation.newest_in_run
        holding = ", ".join(f"{name} #{num}" for name, num in members.items())
        lines.append(
            f"Newest workflow snapshot of this run: {snapshot_id} ({holding})."
        )
    if explanation.up_to_date:
        lines.append(
            "Every instance's newest snapshot is in it: no newer workflow snapshot"
            " can exist until the instances take more snapshots."
        )
        return lines
    if explanation.newest_in_run is not None:
        taken = ", ".join(
            f"{item.instance} {item.snapshots_since}" for item in explanation.instances
        )
        lines.append(f"Snapshots taken since: {taken}.")
    stalled = explanation.stalled
    if stalled:
        names = ", ".join(item.instance for item in stalled)
        lines.append(
            f"Took no snapshot since: {names}. A newer workflow snapshot would have"
            " to hold their old snapshots together with newer ones of their peers;"
            " below is why those do not fit."
        )
    for item in explanation.instances:
        if item.node.is_restart:
            lines.append(f"{item.instance}: has taken no snapshot in this run yet.")
            continue
        if item.workflow_snapshot is not None and (
            explanation.newest_in_run is not None
            and item.workflow_snapshot == explanation.newest_in_run[0]
        ):
            continue
        lines.append(f"{_node_words(item.node)}:")
        if item.workflow_snapshot is not None:
            lines.append(
                f"  in workflow snapshot {item.workflow_snapshot}, not in the newest."
            )
        blocking = item.blocking_peers
        if not blocking:
            lines.append(
                "  consistent with "
                + _consistent_words(item.peers)
                + "; no workflow snapshot holds those with consistent nodes of"
                " every other instance (see those instances here)."
            )
        for peer in blocking:
            lines.append(
                f"  no active node of {peer.peer} is consistent with it"
                + (":" if peer.checked else " (it has none).")
            )
            for checked in peer.checked:
                label = "restart node" if checked.is_restart else f"#{checked.num}"
                lines.append(f"    {peer.peer} {label}:")
                lines.extend(
                    f"      {mismatch.in_words()}" for mismatch in checked.mismatches
                )
            if peer.not_shown:
                lines.append(
                    f"    ... and {peer.not_shown} older active node"
                    f"{'' if peer.not_shown == 1 else 's'} (--candidates 0 shows"
                    " all)"
                )
        if blocking and len(blocking) < len(item.peers):
            lines.append("  consistent with " + _consistent_words(item.peers))
    return lines


def _consistent_words(peers: tuple[PeerExplanation, ...]) -> str:
    return "; ".join(
        f"{peer.peer} #{', #'.join(map(str, peer.consistent_with))}"
        for peer in peers
        if peer.consistent_with
    )


def _node_words(node: RecordedNode) -> str:
    kind = "final" if node.is_final else "intermediate"
    time = "" if node.simulation_time is None else f"t = {node.simulation_time:g}, "
    return (
        f"{node.instance} #{node.num} ({time}wallclock {node.wallclock_time:.3f} s,"
        f" {kind})"
    )


__all__ = [
    "explanation_json",
    "explanation_lines",
]
