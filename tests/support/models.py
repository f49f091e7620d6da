"""yMMSL models that several tests write to files or load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MACRO_MICRO_YMMSL = """
ymmsl_version: v0.2
models:
  coupled:
    components:
      macro:
        ports: {o_i: state_out, s: state_in}
        implementation: macro
        description: macro model
      micro:
        ports: {f_init: initial_state, o_f: final_state}
        implementation: micro
        description: micro model
        multiplicity: 2
    conduits:
      macro.state_out: micro.initial_state
      micro.final_state: macro.state_in
"""
"""A macro model driving two micro instances over vector ports."""


def macro_micro_checkpoint(
    instance: str, checkpoint: int, path: Path
) -> dict[str, Any]:
    """The snapshot metadata an instance of MACRO_MICRO_YMMSL registers at a
    checkpoint (from 1), its file at ``path``: at each checkpoint, the three
    instances' snapshots make one workflow snapshot."""
    counts = (
        {"state_out": [checkpoint] * 2, "state_in": [checkpoint] * 2}
        if instance == "macro"
        else {"initial_state": [checkpoint], "final_state": [checkpoint]}
    )
    return {
        "triggers": ["test"],
        "wallclock_time": float(checkpoint),
        "timestamp": float(checkpoint),
        "next_timestamp": None,
        "port_message_counts": counts,
        "is_final_snapshot": False,
        "snapshot_filename": str(path),
    }
