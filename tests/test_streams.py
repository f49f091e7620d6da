"""Checks that the simulated registration streams and the MUSCLE3 oracle are sound.

Other tests compare snapreg with MUSCLE3 on these streams; that comparison is only
worth something if the streams look like real runs (counts that never decrease,
workflow snapshots that are really found) and if near misses really change results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import pytest

from snapreg.rules.metadata import METADATA_FIELDS
from support.oracle import OracleStep, run_oracle, workflow_snapshot_count
from support.streams import (
    SETTINGS_PORT,
    Stream,
    all_streams,
    chain,
    macro_micro,
    near_miss,
    realistic_streams,
)

STREAMS = all_streams(0)
REALISTIC = [stream for stream in STREAMS if stream.realistic]
NEAR_MISSES = [stream for stream in STREAMS if not stream.realistic]


@pytest.fixture(scope="module")
def oracle_results() -> dict[str, list[OracleStep]]:
    """Run the oracle once on every stream of ``all_streams(0)``, timing it."""
    started = time.perf_counter()
    results = {stream.name: run_oracle(stream) for stream in STREAMS}
    elapsed = time.perf_counter() - started
    total = sum(workflow_snapshot_count(steps) for steps in results.values())
    print(
        f"\noracle: {len(STREAMS)} streams, {total} workflow snapshots, {elapsed:.2f} s"
    )
    return results


def _slot_counts(counts: Mapping[str, list[int]]) -> dict[tuple[str, int], int]:
    """Flatten port counts to (port, slot) -> count."""
    return {
        (port, slot): count
        for port, port_counts in counts.items()
        for slot, count in enumerate(port_counts)
    }


def _workflow_snapshots(
    steps: list[OracleStep],
) -> list[list[frozenset[tuple[str, int]]]]:
    """Return the workflow snapshots of every step."""
    return [step.workflow_snapshots for step in steps]


def test_scenario_set_is_varied() -> None:
    scenarios = {stream.scenario for stream in STREAMS}
    assert {
        "macro_micro",
        "ensemble",
        "stateless_scatter",
        "chain",
        "near_miss",
    } <= scenarios
    assert len({stream.name for stream in STREAMS}) == len(STREAMS)
    for stream in STREAMS:
        assert len(stream.registrations) < 300, stream.name
        assert len(stream.instances()) >= 2, stream.name


@pytest.mark.parametrize("stream", STREAMS, ids=lambda stream: stream.name)
def test_registrations_are_snapshot_metadata(stream: Stream) -> None:
    instances = set(stream.instances())
    for instance, fields in stream.registrations:
        assert instance in instances
        assert tuple(fields) == METADATA_FIELDS
        assert isinstance(fields["triggers"], list) and fields["triggers"]
        assert math.isfinite(fields["wallclock_time"])
        for counts in fields["port_message_counts"].values():
            assert counts and all(
                isinstance(count, int) and count >= 0 for count in counts
            )
        if fields["is_final_snapshot"]:
            assert fields["next_timestamp"] is None


@pytest.mark.parametrize("stream", STREAMS, ids=lambda stream: stream.name)
def test_counts_of_each_instance_never_decrease(stream: Stream) -> None:
    previous: dict[str, dict[tuple[str, int], int]] = {}
    for instance, fields in stream.registrations:
        current = _slot_counts(fields["port_message_counts"])
        for key, count in previous.get(instance, {}).items():
            assert current.get(key, 0) >= count, (instance, key)
        previous[instance] = current


@pytest.mark.parametrize("stream", REALISTIC, ids=lambda stream: stream.name)
def test_instances_snapshot_in_their_own_order(stream: Stream) -> None:
    by_instance: dict[str, list[dict[str, object]]] = {}
    for instance, fields in stream.registrations:
        by_instance.setdefault(instance, []).append(fields)
    assert set(by_instance) == set(stream.instances())
    for instance, snapshots in by_instance.items():
        wallclock = [float(str(fields["wallclock_time"])) for fields in snapshots]
        assert wallclock == sorted(wallclock), instance
        assert snapshots[-1]["is_final_snapshot"], instance
        assert snapshots[-1]["triggers"] == ["at_end"], instance
        filenames = [fields["snapshot_filename"] for fields in snapshots]
        assert len(set(filenames)) == len(filenames), instance


@pytest.mark.parametrize("stream", REALISTIC, ids=lambda stream: stream.name)
def test_realistic_streams_find_workflow_snapshots(
    stream: Stream, oracle_results: dict[str, list[OracleStep]]
) -> None:
    steps = oracle_results[stream.name]
    assert workflow_snapshot_count(steps) >= 1
    # All final snapshots carry the total counts, so together they are consistent
    # and complete a workflow snapshot when the last one is registered.
    last_nums = {step.instance: step.num for step in steps}
    assert frozenset(last_nums.items()) in steps[-1].workflow_snapshots


@pytest.mark.parametrize(
    "stream",
    [s for s in REALISTIC if s.scenario == "macro_micro" and not s.jittered],
    ids=lambda stream: stream.name,
)
def test_every_macro_checkpoint_reaches_a_workflow_snapshot(
    stream: Stream, oracle_results: dict[str, list[OracleStep]]
) -> None:
    steps = oracle_results[stream.name]
    members = {
        member
        for step in steps
        for workflow_snapshot in step.workflow_snapshots
        for member in workflow_snapshot
    }
    for step, (instance, fields) in zip(steps, stream.registrations, strict=True):
        if instance.startswith("macro"):
            assert (instance, step.num) in members, (instance, fields["timestamp"])


def test_oracle_steps_are_faithful(oracle_results: dict[str, list[OracleStep]]) -> None:
    for stream in STREAMS:
        steps = oracle_results[stream.name]
        filenames: dict[tuple[str, int], str] = {}
        next_num: dict[str, int] = {}
        for step, (instance, fields) in zip(steps, stream.registrations, strict=True):
            # Restart nodes have num 1, so real snapshots count from 2.
            expected_num = next_num.get(instance, 2)
            assert (step.instance, step.num) == (instance, expected_num)
            next_num[instance] = expected_num + 1
            filenames[(instance, step.num)] = fields["snapshot_filename"]
            assert set(step.active) == set(stream.instances())
            assert step.active[instance][-1] == step.num
            assert len(step.resume) == len(step.workflow_snapshots)
            for workflow_snapshot, resume in zip(
                step.workflow_snapshots, step.resume, strict=True
            ):
                assert (instance, step.num) in workflow_snapshot
                assert {name for name, _ in workflow_snapshot} == set(
                    stream.instances()
                )
                assert resume == {
                    name: filenames[(name, num)]
                    for name, num in workflow_snapshot
                    if num > 1
                }


def test_restart_nodes_appear_in_workflow_snapshots(
    oracle_results: dict[str, list[OracleStep]],
) -> None:
    with_restart_members = [
        stream.name
        for stream in REALISTIC
        if any(
            num == 1
            for step in oracle_results[stream.name]
            for workflow_snapshot in step.workflow_snapshots
            for _, num in workflow_snapshot
        )
    ]
    assert with_restart_members


def test_stateless_component_takes_implicit_snapshots(
    oracle_results: dict[str, list[OracleStep]],
) -> None:
    stream = next(s for s in REALISTIC if s.scenario == "stateless_scatter")
    steps = oracle_results[stream.name]
    scatter_snapshots = [
        (step.num, fields)
        for step, (instance, fields) in zip(steps, stream.registrations, strict=True)
        if instance == "scatter"
    ]
    assert scatter_snapshots
    for _, fields in scatter_snapshots:
        assert math.isnan(fields["timestamp"])
        assert fields["next_timestamp"] is None
        assert fields["is_final_snapshot"]
    members = {
        member
        for step in steps
        for workflow_snapshot in step.workflow_snapshots
        for member in workflow_snapshot
    }
    assert any(("scatter", num) in members for num, _ in scatter_snapshots)


def test_some_streams_report_ports_no_conduit_uses() -> None:
    def unconnected_ports(stream: Stream) -> set[str]:
        model = stream.config.root_model()
        used = {str(conduit.sending_port()) for conduit in model.conduits}
        used |= {str(conduit.receiving_port()) for conduit in model.conduits}
        return {
            port
            for _, fields in stream.registrations
            for port in fields["port_message_counts"]
            if port not in used
        }

    reporting = [
        stream for stream in REALISTIC if SETTINGS_PORT in unconnected_ports(stream)
    ]
    assert len(reporting) >= 3
    assert any(
        fields["port_message_counts"][SETTINGS_PORT] == [1]
        for stream in reporting
        for _, fields in stream.registrations
    )
    # MUSCLE3's uq example connects the load balancer to muscle_settings_in itself.
    assert any(
        SETTINGS_PORT
        in {str(conduit.receiving_port()) for conduit in s.config.root_model().conduits}
        for s in REALISTIC
    )


def test_streams_are_deterministic() -> None:
    again = all_streams(0)
    assert [stream.name for stream in again] == [stream.name for stream in STREAMS]
    assert [repr(stream.registrations) for stream in again] == [
        repr(stream.registrations) for stream in STREAMS
    ]
    assert repr(realistic_streams(1)[0].registrations) != repr(
        realistic_streams(0)[0].registrations
    )


@pytest.mark.parametrize("stream", NEAR_MISSES, ids=lambda stream: stream.name)
def test_near_misses_stay_close_to_their_base(stream: Stream) -> None:
    base = next(s for s in REALISTIC if s.name == stream.perturbed_from)
    assert len(stream.registrations) == len(base.registrations)
    differences = 0
    for (instance, fields), (base_instance, base_fields) in zip(
        stream.registrations, base.registrations, strict=True
    ):
        assert instance == base_instance
        counts = _slot_counts(fields["port_message_counts"])
        base_counts = _slot_counts(base_fields["port_message_counts"])
        for key in counts.keys() | base_counts.keys():
            change = abs(counts.get(key, 0) - base_counts.get(key, 0))
            assert change <= 4
            differences += change > 0
    assert differences >= 1


def test_near_misses_change_oracle_results() -> None:
    differing: dict[str, int] = {}
    for seed in range(3):
        streams = all_streams(seed)
        results = {stream.name: run_oracle(stream) for stream in streams}
        near_misses = [stream for stream in streams if not stream.realistic]
        changed = [
            stream
            for stream in near_misses
            if stream.perturbed_from is not None
            and _workflow_snapshots(results[stream.name])
            != _workflow_snapshots(results[stream.perturbed_from])
        ]
        assert len(changed) * 2 >= len(near_misses), seed
        for stream in changed:
            assert stream.perturbed_from is not None
            family = stream.perturbed_from.split("[")[0]
            differing[family] = differing.get(family, 0) + 1
    assert set(differing) >= {"macro_micro", "ensemble", "stateless_scatter", "chain"}


def test_near_miss_leaves_base_untouched() -> None:
    base = chain(1, length=3, num_steps=4)
    before = repr(base.registrations)
    derived = near_miss(base, 1, num_perturbations=3)
    assert repr(base.registrations) == before
    assert derived.perturbed_from == base.name


def test_larger_fan_out_is_still_realistic() -> None:
    stream = macro_micro(7, num_micro=10, num_steps=3, micro_intermediate=False)
    steps = run_oracle(stream)
    assert len(stream.instances()) == 11
    # One workflow snapshot per macro checkpoint, and one at the end.
    assert workflow_snapshot_count(steps) >= 3
