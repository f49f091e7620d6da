"""Workflow snapshot files: byte-identical to ymmsl's, and names that never run out."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import ymmsl
from hypothesis import given, settings
from hypothesis import strategies as st
from ymmsl import v0_1, v0_2

from snapreg.rules.metadata import SnapshotMetadata
from snapreg.rules.workflow_file import Member, describe, render, resume_mapping


def reference_render(resume: dict[str, str], description: str) -> str:
    """What ymmsl itself writes for this workflow snapshot."""
    config = v0_2.Configuration(
        resume={v0_1.Reference(k): Path(v) for k, v in resume.items()},
        description=description,
    )
    return str(ymmsl.dump(config))


identifiers = st.one_of(
    st.sampled_from(["macro", "micro", "on", "No", "null", "y", "TRUE", "x" * 130]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
)
instances = st.builds(
    lambda name, indices: name + "".join(f"[{i}]" for i in indices),
    identifiers,
    st.lists(st.integers(0, 30), max_size=2),
)
paths = st.one_of(
    st.from_regex(r"/[a-z0-9_]{1,8}(/[a-z0-9_.\-\[\]]{1,10}){0,4}", fullmatch=True),
    st.from_regex(r"[a-z./]{1,12}", fullmatch=True),
    st.text(min_size=1, max_size=20).filter(lambda text: "\x00" not in text),
    st.sampled_from(["/a//b", "/a/./b", "./x/y", "/x/", "1.5/2", "/tmp/a b", "/x: y"]),
)
times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 10**6).map(float)
)
members = st.builds(
    lambda instance, filename, timestamp, wallclock, final, triggers: Member(
        instance,
        SnapshotMetadata(triggers, wallclock, timestamp, None, {}, final, filename),
        False,
    ),
    instances,
    paths,
    times,
    st.floats(0, 1e6),
    st.booleans(),
    st.lists(
        st.one_of(
            st.sampled_from(["at_end", "simulation_time >= 1"]), st.text(max_size=10)
        ),
        max_size=2,
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(members, min_size=1, max_size=6, unique_by=lambda m: m.instance))
def test_files_are_byte_identical_to_ymmsl(chosen: list[Member]) -> None:
    description = describe("model", chosen, datetime(2026, 11, 26, 1, 2, 3))
    resume = resume_mapping(chosen)
    assert render(resume, description) == reference_render(resume, description)


@given(st.dictionaries(instances, paths, max_size=4), st.text(max_size=60))
def test_any_description_is_byte_identical_to_ymmsl(
    resume: dict[str, str], description: str
) -> None:
    assert render(resume, description) == reference_render(resume, description)


def test_the_description_reads_like_muscle3s() -> None:
    nodes = [
        Member(
            "micro[10]",
            SnapshotMetadata(["at_end"], 2.0, 1.5, None, {}, True, "/b"),
            False,
        ),
        Member(
            "micro[2]",
            SnapshotMetadata(["t >= 1"], 1.25, 1.0, None, {}, False, "/c"),
            False,
        ),
        Member(
            "macro",
            SnapshotMetadata(["Instance start"], 0.0, 0.0, None, {}, True, ""),
            True,
        ),
    ]
    text = describe("rd", nodes, datetime(2026, 11, 26, 1, 2, 3))
    assert text == (
        "Workflow snapshot for rd taken on 2026-11-26 01:02:03.\n"
        "Snapshot triggers:\n"
        "- Instance start (macro)\n"
        "- at_end (micro[10])\n"
        "- t >= 1 (micro[2])\n"
        "\n"
        "Instance  t           Wallclock time  Type\n"
        "--------------------------------------------------\n"
        "macro     0           0               Final\n"
        "micro[2]  1           1.25            Intermediate\n"
        "micro[10] 1.5         2               Final\n"
    )
    # restart members resume from scratch: they are left out, as MUSCLE3 does
    assert resume_mapping(nodes) == {"micro[2]": "/c", "micro[10]": "/b"}


@pytest.mark.muscle3
def test_descriptions_equal_muscle3s_own() -> None:
    from libmuscle.manager.snapshot_registry import SnapshotNode as Muscle3Node
    from libmuscle.manager.snapshot_registry import SnapshotRegistry as Muscle3Registry
    from libmuscle.manager.topology_store import TopologyStore
    from libmuscle.snapshot import SnapshotMetadata as Muscle3Metadata
    from ymmsl.v0_2 import Reference

    from support.streams import all_streams

    moment = datetime(2026, 11, 26, 4, 5, 6)
    for stream in all_streams(1):
        muscle3 = Muscle3Registry(
            stream.config, Path("."), TopologyStore(stream.config)
        )
        latest: dict[str, dict[str, object]] = {}
        for instance, metadata in stream.registrations:
            latest[instance] = metadata
        theirs = [
            Muscle3Node(
                2, Reference(instance), Muscle3Metadata(**metadata), frozenset()
            )
            for instance, metadata in latest.items()
        ]
        ours = [
            Member(instance, SnapshotMetadata(**metadata), False)  # type: ignore[arg-type]
            for instance, metadata in latest.items()
        ]
        theirs.sort(key=lambda node: node.instance)
        expected = muscle3._generate_description(theirs, moment)
        assert describe(stream.config.root_model().name, ours, moment) == expected
