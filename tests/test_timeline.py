"""The timeline's data: where `snapreg plot` and the dashboard put each snapshot.

A resumed instance first registers again the snapshot it resumed from, with that
snapshot's metadata: the wallclock time is the earlier run's clock. These tests
build resumed runs through the registry itself (the copy in a new file, as
libmuscle makes it; the very same file; a run without recorded lineage) and check
the data the picture is drawn from, never pixels: which nodes are copies, of which
run, and that every lane then runs forward in time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from snapreg import SnapshotRegistry
from snapreg.rules.metadata import SnapshotMetadata, coerce_metadata
from snapreg.tools.plot import svg_text
from snapreg.tools.plot_layout import TimelineLayout
from snapreg.tools.run_graph import RunGraph, load_run_graph
from support.streams import macro_micro

STREAM = macro_micro(11, num_micro=2, num_steps=6, micro_intermediate=False)
#: Registrations of run 1; the rest are run 2's, after the resume.
SPLIT = len(STREAM.registrations) // 2
#: Run 2's own snapshots start this long after its manager started: far earlier,
#: on its clock, than the run 1 times its copies carry.
RUN_2_CLOCK_START = 0.05


def _metadata(index: int) -> tuple[str, SnapshotMetadata]:
    instance, fields = STREAM.registrations[index]
    return instance, coerce_metadata(fields)


def _resumed_campaign(
    tmp_path: Path, *, copy: str, lineage: bool = True
) -> tuple[str, dict[str, SnapshotMetadata]]:
    """Run 1, then run 2 resumed from run 1's newest workflow snapshot.

    Args:
        copy: ``new file``: each resumed instance registers a copy of its
            snapshot file in run 2's folder (what libmuscle does); ``same file``:
            the very file it resumed from.
        lineage: Whether run 2 records the workflow snapshot it resumed from.

    Returns:
        The database URL and, per resumed instance, the metadata of its member.
    """
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    with SnapshotRegistry(STREAM.config, None, database_url=url) as registry:
        for index in range(SPLIT):
            registry.add_snapshot(*_metadata(index))
        newest = registry.workflow_snapshots()[-1]
    members = {
        str(node.instance): node.snapshot
        for node in newest.nodes
        if not node.is_restart
    }
    assert members, "run 1 must leave members to resume"
    resumed_from = newest.id if lineage else None
    first_wallclock = min(
        coerce_metadata(fields).wallclock_time
        for _, fields in STREAM.registrations[SPLIT:]
    )
    with SnapshotRegistry(
        STREAM.config,
        None,
        database_url=url,
        new_run=True,
        resumed_from=resumed_from,
    ) as registry:
        for instance, original in members.items():
            filename = original.snapshot_filename
            if copy == "new file":
                filename = filename.replace("/run/", "/run2/")
            registry.add_snapshot(
                instance, dataclasses.replace(original, snapshot_filename=filename)
            )
        for index in range(SPLIT, len(STREAM.registrations)):
            instance, data = _metadata(index)
            clock = data.wallclock_time - first_wallclock + RUN_2_CLOCK_START
            registry.add_snapshot(
                instance, dataclasses.replace(data, wallclock_time=clock)
            )
    return url, members


def _copies_by_instance(graph: RunGraph) -> dict[str, tuple[int, int]]:
    """Per instance: (num, run resumed from) of its copy."""
    return {
        graph.nodes[node_id].instance: (graph.nodes[node_id].num, run)
        for node_id, run in graph.resumed_copies.items()
    }


def _lanes_run_forward(graph: RunGraph, layout: TimelineLayout) -> list[str]:
    """The instances whose nodes, by num, are not placed left to right."""
    backwards = []
    for instance in graph.instances:
        times = [
            layout.positions[node.id][0]
            for node in graph.nodes_of(instance)
            if node.id in layout.positions
        ]
        if times != sorted(times):
            backwards.append(instance)
    return backwards


@pytest.mark.parametrize("copy", ["new file", "same file"])
def test_a_resumed_instance_s_copy_is_marked_and_placed_at_the_run_s_start(
    tmp_path: Path, copy: str
) -> None:
    url, members = _resumed_campaign(tmp_path, copy=copy)
    graph = load_run_graph(url, None, run=2)
    layout = TimelineLayout(graph, "wallclock")

    assert _copies_by_instance(graph) == {instance: (2, 1) for instance in members}
    for node_id in graph.resumed_copies:
        node = graph.nodes[node_id]
        # it carries run 1's clock, later than run 2's own first snapshots ...
        assert node.wallclock_time == members[node.instance].wallclock_time
        assert node.wallclock_time > RUN_2_CLOCK_START
        # ... and is drawn where run 2 took it up: at its start
        assert layout.positions[node_id] == (0.0, layout.lane_of[node.instance])
    assert _lanes_run_forward(graph, layout) == []
    # the axis ends at run 2's own newest snapshot, not at run 1's clock
    own = [
        node.wallclock_time
        for node in graph.nodes.values()
        if not node.is_restart and node.id not in graph.resumed_copies
    ]
    assert layout.end == max(own)


def test_without_the_fix_the_copies_would_run_backwards(tmp_path: Path) -> None:
    """The test above can fail: placed by their own clock, the lanes go back."""
    url, _ = _resumed_campaign(tmp_path, copy="new file")
    graph = dataclasses.replace(load_run_graph(url, None, run=2), resumed_copies={})
    layout = TimelineLayout(graph, "wallclock")

    assert _lanes_run_forward(graph, layout) != []


def test_a_run_without_lineage_finds_its_copies_in_earlier_runs(
    tmp_path: Path,
) -> None:
    url, members = _resumed_campaign(tmp_path, copy="new file", lineage=False)
    graph = load_run_graph(url, None, run=2)

    assert _copies_by_instance(graph) == {instance: (2, 1) for instance in members}


def test_run_1_and_instances_that_start_afresh_have_no_copies(
    tmp_path: Path,
) -> None:
    url, members = _resumed_campaign(tmp_path, copy="new file")
    first = load_run_graph(url, None, run=1)
    second = load_run_graph(url, None, run=2)

    assert first.resumed_copies == {}
    afresh = set(second.instances) - set(members)
    assert not afresh & set(_copies_by_instance(second))


def test_on_the_simulation_axis_a_copy_keeps_its_simulation_time(
    tmp_path: Path,
) -> None:
    url, members = _resumed_campaign(tmp_path, copy="new file")
    graph = load_run_graph(url, None, run=2)
    layout = TimelineLayout(graph, "simulation")

    for node_id in graph.resumed_copies:
        node = graph.nodes[node_id]
        assert layout.positions[node_id][0] == members[node.instance].timestamp
    assert _lanes_run_forward(graph, layout) == []


def test_the_svg_marks_the_copies_and_labels_the_run_they_resume(
    tmp_path: Path,
) -> None:
    url, _ = _resumed_campaign(tmp_path, copy="new file")
    svg = svg_text(load_run_graph(url, None, run=2))

    assert svg.startswith("<svg")
    assert 'id="resumed-from-run-1"' in svg
    assert "resumed from run 1" in svg
    assert 'id="resumed-copies-' in svg
    assert 'id="consistent-pairs"' in svg


def test_newest_loads_the_newest_nodes_and_the_active_ones_with_their_pairs(
    tmp_path: Path,
) -> None:
    url, _ = _resumed_campaign(tmp_path, copy="new file")
    whole = load_run_graph(url, None, run=2)
    part = load_run_graph(url, None, run=2, newest=5)

    newest_five = sorted(whole.nodes)[-5:]
    active = [node.id for node in whole.nodes.values() if node.active]
    assert sorted(part.nodes) == sorted(set(newest_five) | set(active))
    assert part.edges == [
        (lower, higher)
        for lower, higher in whole.edges
        if lower in part.nodes and higher in part.nodes
    ]
    assert part.total_nodes == whole.total_nodes == len(whole.nodes)
    assert len(part.nodes) < part.total_nodes
    assert part.workflow_snapshots == whole.workflow_snapshots
