"""The scale benchmark feeds the registry what a macro with N micros would send.

Results only, never timings (those live in ``benchmarks/scale.py``): each macro
registration completes exactly one workflow snapshot of every instance, as the
simulated ``macro_micro`` stream does, and MUSCLE3's own registry agrees.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from snapreg import SnapshotRegistry
from support.oracle import run_oracle, workflow_snapshot_count
from support.streams import macro_micro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from scale import measure, registrations  # noqa: E402


@pytest.mark.parametrize("micros", [1, 4])
def test_every_macro_registration_completes_one_workflow_snapshot(
    tmp_path: Path, micros: int
) -> None:
    model = macro_micro(0, num_micro=micros, num_steps=0)
    config = model.config
    stream = list(registrations(micros, steps=3))
    assert len(stream) == 3 * (micros + 1)
    found = []
    with SnapshotRegistry(
        config, tmp_path, database_url=f"sqlite:///{tmp_path / 'scale.sqlite'}"
    ) as registry:
        for instance, metadata in stream:
            found.append((instance, registry.add_snapshot(instance, metadata)))
    for instance, snapshots in found:
        if instance == "macro":
            (snapshot,) = snapshots
            assert len(snapshot.members) == micros + 1
        else:
            assert snapshots == []
    as_fields = [
        (instance, dataclasses.asdict(metadata)) for instance, metadata in stream
    ]
    oracle = run_oracle(dataclasses.replace(model, registrations=as_fields))
    assert workflow_snapshot_count(oracle) == 3


def test_measure_opens_a_fresh_run_and_counts_its_registrations(
    tmp_path: Path,
) -> None:
    opened, per_registration, count = measure(
        f"sqlite:///{tmp_path / 'measured.sqlite'}", micros=3, steps=2
    )
    assert count == 2 * 4
    assert opened > 0 and per_registration > 0
