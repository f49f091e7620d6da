"""Bad input, generated: every refusal is snapreg's own error and changes nothing.

Hypothesis throws malformed metadata, unknown instances, wrong types, negative, huge
and decreasing counts, NaN and infinite times and odd file names at
``add_snapshot`` and ``register_snapshot``; bad configurations, URLs, folders and
options at the constructor; and bad instances, ids, campaigns, URLs and writing SQL
at the command line. Each must be refused with a :class:`SnapregError` (bad input
with an :class:`InvalidInputError`) and leave every row of every table, and every
file, exactly as it was; afterwards the registry goes on exactly as MUSCLE3 would.

Budgets: about 200 examples per backend by default; ``SNAPREG_TEST_PROFILE=long``
multiplies them by 25. The holes these properties found (huge numbers, text that
PostgreSQL cannot store, unchecked constructor arguments) are fixed and kept, one
by one, as ordinary tests at the end.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import ymmsl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, inspect
from ymmsl import v0_1

from snapreg import (
    InvalidInputError,
    SnapregError,
    SnapshotRegistry,
)
from snapreg.cli.main import main as snapreg_main
from snapreg.rules.metadata import (
    MAX_FILENAME_LENGTH,
    MAX_MESSAGE_COUNT,
    METADATA_FIELDS,
)
from support.command_line import without_superuser_warning
from support.entries import call_entry
from support.oracle import run_oracle
from support.streams import macro_micro
from support.torture import inspection_engine

LONG = os.environ.get("SNAPREG_TEST_PROFILE") == "long"
STREAM = macro_micro(41, num_micro=3, num_steps=4)
HALF = len(STREAM.registrations) // 2
INSTANCES = set(STREAM.instances())

settings.register_profile(
    "snapreg-bad-input",
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BASE = settings.get_profile("snapreg-bad-input")


def budget(examples: int) -> settings:
    """Settings with this many examples (25 times more in the long profile)."""
    return settings(BASE, max_examples=examples * (25 if LONG else 1))


#: Bad inputs tried, per kind, over the session (printed at the end with -s).
TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_tried() -> Iterator[None]:
    yield
    print(f"\nbad inputs tried: {dict(TRIED)}, total {sum(TRIED.values())}")


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under the folder with its content."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class Seeded:
    """A registry with half of the stream registered, and a way to see its state."""

    def __init__(self, url: str, root: Path, campaign: str | None = None) -> None:
        self.url = url
        self.campaign = campaign
        self.folder = root / "snapshots"
        self.folder.mkdir()
        self.registry = self.open()
        for instance, metadata in STREAM.registrations[:HALF]:
            self.registry.add_snapshot(instance, metadata)
        self.engine = inspection_engine(url)
        self.tables = MetaData()
        self.tables.reflect(self.engine)

    def open(self) -> SnapshotRegistry:
        return SnapshotRegistry(
            STREAM.config, self.folder, database_url=self.url, campaign=self.campaign
        )

    def close(self) -> None:
        self.registry.close()
        self.engine.dispose()

    def state(self) -> tuple[Any, ...]:
        """Table names, every row of every table, and every file."""
        with self.engine.connect() as connection:
            names = sorted(inspect(connection).get_table_names())
            rows = {
                name: sorted(
                    tuple(map(repr, row)) for row in connection.execute(table.select())
                )
                for name, table in self.tables.tables.items()
            }
        return names, rows, folder_state(self.folder)

    def refuses(self, kind: str, call: Callable[[], object]) -> SnapregError:
        """``call`` raises snapreg's own error and changes nothing."""
        TRIED[kind] += 1
        before = self.state()
        with pytest.raises(SnapregError) as refused:
            call()
        assert str(refused.value).strip()
        assert self.state() == before
        return refused.value

    def finish_like_muscle3(self) -> None:
        """The rest of the stream gives exactly MUSCLE3's results."""
        steps = run_oracle(STREAM)
        for index in range(HALF, len(STREAM.registrations)):
            found = self.registry.add_snapshot(*STREAM.registrations[index])
            assert sorted(sorted(w.members) for w in found) == sorted(
                sorted(members) for members in steps[index].workflow_snapshots
            )
        for instance in INSTANCES:
            assert [n.num for n in self.registry.snapshots(instance)] == steps[
                -1
            ].active[instance]


@pytest.fixture
def seeded(persistent_database_url: str, tmp_path: Path) -> Iterator[Seeded]:
    seeded = Seeded(persistent_database_url, tmp_path)
    try:
        yield seeded
    finally:
        seeded.close()


# ------------------------------------------------------------------ strategies

NEXT_INSTANCE, NEXT_METADATA = STREAM.registrations[HALF]
PREVIOUS_COUNTS = next(
    metadata["port_message_counts"]
    for instance, metadata in reversed(STREAM.registrations[:HALF])
    if instance == NEXT_INSTANCE
)

not_a_list = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
not_a_number = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.lists(st.floats(), max_size=2)
)
not_a_bool = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
bad_count = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=MAX_MESSAGE_COUNT + 1),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
not_a_port_name = st.one_of(
    st.text(max_size=8).filter(lambda name: not name.isidentifier()),
    st.integers(),
    st.none(),
)
bad_filename = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=20).map(lambda name: name + "\x00"),
    st.builds(
        lambda name, control: name + chr(control) + name,
        st.text(max_size=10),
        st.integers(1, 31),
    ),
    st.text(alphabet="ab/.", min_size=MAX_FILENAME_LENGTH + 1, max_size=5000),
    st.none(),
    st.integers(),
    st.binary(max_size=5),
)


@st.composite
def decreasing_counts(draw: st.DrawFn) -> dict[str, list[int]]:
    """The next snapshot's counts with one slot below its previous snapshot's."""
    counts = {
        port: list(slots)
        for port, slots in NEXT_METADATA["port_message_counts"].items()
    }
    lowered = [
        (port, slot)
        for port, slots in PREVIOUS_COUNTS.items()
        for slot, count in enumerate(slots)
        if count > 0
    ]
    port, slot = draw(st.sampled_from(lowered))
    counts.setdefault(port, [])
    while len(counts[port]) <= slot:
        counts[port].append(0)
    counts[port][slot] = draw(st.integers(0, PREVIOUS_COUNTS[port][slot] - 1))
    return counts


def replaced(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values.map(lambda value: (f"{field}", {**NEXT_METADATA, field: value}))


bad_metadata = st.one_of(
    # the whole thing is not metadata
    not_a_list.map(lambda value: ("not metadata", value)),
    st.sampled_from(METADATA_FIELDS).map(
        lambda missing: (
            "missing field",
            {k: v for k, v in NEXT_METADATA.items() if k != missing},
        )
    ),
    st.text(min_size=1, max_size=10)
    .filter(lambda key: key not in METADATA_FIELDS)
    .map(lambda extra: ("extra field", {**NEXT_METADATA, extra: 1})),
    replaced("triggers", not_a_list),
    replaced(
        "triggers",
        st.lists(st.one_of(st.integers(), st.none(), st.binary()), min_size=1),
    ),
    replaced(
        "wallclock_time",
        st.one_of(not_a_number, st.sampled_from([math.nan, math.inf, -math.inf])),
    ),
    replaced("timestamp", not_a_number),
    replaced("next_timestamp", not_a_number.filter(lambda value: value is not None)),
    replaced("is_final_snapshot", not_a_bool),
    replaced("snapshot_filename", bad_filename),
    replaced(
        "port_message_counts",
        st.one_of(
            st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers())
        ),
    ),
    replaced(
        "port_message_counts",
        st.builds(lambda name: {name: [1]}, not_a_port_name),
    ),
    replaced(
        "port_message_counts",
        st.builds(
            lambda slots: {"init_in": slots},
            not_a_list.filter(lambda value: not isinstance(value, (list, tuple))),
        ),
    ),
    replaced(
        "port_message_counts",
        st.builds(
            lambda good, bad, where: {"state_out": good[:where] + [bad] + good[where:]},
            st.lists(st.integers(0, 10), max_size=3),
            bad_count,
            st.integers(0, 3),
        ),
    ),
    replaced("port_message_counts", decreasing_counts()).map(
        lambda case: ("decreasing counts", case[1])
    ),
)

component_names = sorted({instance.partition("[")[0] for instance in INSTANCES})
unknown_instance = st.one_of(
    st.text(max_size=12).filter(lambda name: name not in INSTANCES),
    st.builds(
        lambda component, indices: component + "".join(f"[{i}]" for i in indices),
        st.sampled_from(component_names + ["nope"]),
        st.lists(st.integers(-3, 12), max_size=3),
    ).filter(lambda name: name not in INSTANCES),
    st.builds(lambda name: f" {name}", st.sampled_from(sorted(INSTANCES))),
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=6),
    st.lists(st.sampled_from(sorted(INSTANCES)), max_size=2),
)


# ------------------------------------------------------ add_snapshot / register


@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_bad_metadata_is_refused_and_changes_nothing(
    seeded: Seeded, entry: str
) -> None:
    call = partial(call_entry, seeded.registry, entry)

    @budget(40)
    @given(bad_metadata)
    def bad(case: tuple[str, Any]) -> None:
        kind, metadata = case
        refused = seeded.refuses(kind, lambda: call(NEXT_INSTANCE, metadata))
        assert isinstance(refused, InvalidInputError)

    bad()
    seeded.finish_like_muscle3()


@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_unknown_instances_are_refused_and_change_nothing(
    seeded: Seeded, entry: str
) -> None:
    call = partial(call_entry, seeded.registry, entry)

    @budget(15)
    @given(unknown_instance)
    def bad(instance: Any) -> None:
        refused = seeded.refuses(
            "unknown instance", lambda: call(instance, NEXT_METADATA)
        )
        assert isinstance(refused, InvalidInputError)
        assert "instance" in str(refused)

    bad()
    seeded.finish_like_muscle3()


odd_but_valid_filename = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=200
)


def test_odd_but_valid_file_names_are_kept_exactly(
    persistent_database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    instance, metadata = "micro[0]", STREAM.registrations[0][1]
    assert STREAM.registrations[0][0] == instance
    with SnapshotRegistry(
        STREAM.config, folder, database_url=persistent_database_url
    ) as registry:
        for name, other in STREAM.registrations:
            if name != instance:
                registry.add_snapshot(name, other)

        @budget(15)
        @given(odd_but_valid_filename)
        def odd(filename: str) -> None:
            TRIED["odd but valid file name"] += 1
            found = registry.add_snapshot(
                instance, {**metadata, "snapshot_filename": filename}
            )
            assert registry.history(instance)[-1].snapshot.snapshot_filename == filename
            for workflow_snapshot in found:
                assert workflow_snapshot.path is not None
                resume = ymmsl.load(workflow_snapshot.path).resume
                assert str(resume[v0_1.Reference(instance)]) == str(Path(filename))

        odd()


# ------------------------------------------------------------- the constructor

bad_urls = st.one_of(
    st.text(max_size=30).filter(
        lambda url: not url.lower().startswith(("sqlite", "postgres")) and url != ""
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}://{rest}",
        st.sampled_from(
            ["mysql", "oracle", "mssql", "nosuch", "sqlite+nosuch", "http"]
        ),
        st.text(alphabet="abc/@:", max_size=10),
    ),
    st.builds(
        lambda port: f"postgresql://u@127.0.0.1:{port}/db",
        st.text(alphabet="abc-x.", min_size=1, max_size=5),
    ),
    st.builds(
        lambda name: f"sqlite:///no/such/folder/{name}.sqlite",
        st.text(alphabet="abc", min_size=1, max_size=5),
    ),
    st.builds(
        lambda name: f"sqlite:///{name}\x00.sqlite", st.text(alphabet="ab", max_size=3)
    ),
    st.integers(),
    # empty ones too: only None means "the default database"
    st.binary(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
    st.just(""),
)


@st.composite
def bad_constructor_arguments(
    draw: st.DrawFn, url: str, folder: Path
) -> tuple[str, dict[str, Any]]:
    arguments: dict[str, Any] = {
        "config": STREAM.config,
        "snapshot_folder": folder,
        "database_url": url,
    }
    kind = draw(
        st.sampled_from(
            [
                "config",
                "snapshot_folder",
                "database_url",
                "durability",
                "writer_timeout",
                "policy",
                "resumed_from",
            ]
        )
    )
    if kind == "config":
        arguments["config"] = draw(
            st.one_of(
                not_a_list,
                st.just(v0_1.PartialConfiguration()),
                st.just(ymmsl.v0_2.Configuration()),
            )
        )
    elif kind == "snapshot_folder":
        arguments["snapshot_folder"] = draw(
            st.one_of(
                st.text(alphabet="xyz", min_size=1, max_size=5).map(
                    lambda name: folder / "missing" / name
                ),
                st.just(Path(__file__)),
            )
        )
    elif kind == "database_url":
        arguments["database_url"] = draw(bad_urls)
    elif kind == "durability":
        arguments["durability"] = draw(
            st.text(max_size=6).filter(lambda text: text not in ("normal", "full"))
        )
    elif kind == "writer_timeout":
        arguments["writer_timeout"] = draw(
            st.one_of(
                st.floats(max_value=0.0, allow_nan=False), st.integers(max_value=0)
            )
        )
    elif kind == "policy":
        arguments["policy"] = draw(
            st.text(max_size=6).filter(lambda text: text not in ("all", "latest"))
        )
    else:
        arguments["new_run"] = True
        arguments["resumed_from"] = draw(
            st.integers(min_value=-(2**63), max_value=2**63 - 1).filter(
                lambda number: not 0 < number < 10_000
            )
        )
    return kind, arguments


def test_bad_constructor_arguments_are_refused_and_change_nothing(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded.registry.close()  # a refusal must not be for want of the writer lease
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a relative SQLite path would land here

    @budget(40)
    @given(bad_constructor_arguments(seeded.url, seeded.folder))
    def bad(case: tuple[str, dict[str, Any]]) -> None:
        kind, arguments = case
        config = arguments.pop("config")
        folder = arguments.pop("snapshot_folder")
        seeded.refuses(
            f"constructor {kind}",
            lambda: SnapshotRegistry(config, folder, **arguments),
        )
        assert list(workdir.iterdir()) == []

    bad()
    seeded.registry = seeded.open()
    seeded.finish_like_muscle3()


# -------------------------------------------------------------- the command line


def run_cli(arguments: list[str]) -> tuple[int, str]:
    """Run ``snapreg`` in this process; its exit status and error output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            snapreg_main(arguments)
        except SystemExit as exit_:
            code = exit_.code
            return (code if isinstance(code, int) else 1), err.getvalue()
    return 0, err.getvalue()


writing_sql = st.builds(
    lambda statement, tail: statement + tail,
    st.sampled_from(
        [
            "DELETE FROM snapshot_node",
            "UPDATE run SET writer_token = 'x'",
            "INSERT INTO campaign (name, created_at) VALUES ('x', CURRENT_TIMESTAMP)",
            "DROP TABLE consistent_pair",
            "CREATE TABLE intruder (x integer)",
            "ALTER TABLE run ADD COLUMN intruder integer",
            "DELETE FROM submission WHERE id > 0; SELECT 1",
            "WITH gone AS (DELETE FROM workflow_snapshot RETURNING id)"
            " SELECT * FROM gone",
        ]
    ),
    st.sampled_from(["", " ", ";", " -- comment"]),
)


@st.composite
def bad_command_lines(draw: st.DrawFn, url: str) -> tuple[str, list[str]]:
    kind = draw(
        st.sampled_from(["history", "show", "export", "workflows", "sql", "db url"])
    )
    if kind == "history":
        instance = draw(
            st.text(min_size=1, max_size=12).filter(lambda i: i not in INSTANCES)
        )
        return kind, ["history", "--db", url, "--", instance]
    if kind in ("show", "export"):
        number = draw(st.integers(min_value=10_000, max_value=2**62))
        return kind, [kind, "--db", url, str(number)]
    if kind == "workflows":
        campaign = draw(
            st.text(min_size=1, max_size=12).filter(lambda c: c != "macro_micro")
        )
        return kind, ["workflows", "--db", url, "--campaign", campaign]
    if kind == "sql":
        return kind, ["sql", "--db", url, draw(writing_sql)]
    bad_url = draw(
        bad_urls.filter(lambda value: isinstance(value, str) and "\x00" not in value)
    )
    return kind, ["campaigns", "--db", bad_url]


def test_bad_command_lines_are_refused_and_change_nothing(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded.registry.close()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    url = seeded.url

    @budget(30)
    @given(bad_command_lines(url))
    def bad(case: tuple[str, list[str]]) -> None:
        kind, arguments = case
        TRIED[f"command line {kind}"] += 1
        before = seeded.state()
        status, errors = run_cli(arguments)
        assert status != 0, arguments
        assert "Traceback" not in errors
        errors = "\n".join(without_superuser_warning(errors))
        assert errors.startswith(("snapreg: error:", "Usage:", "Error:")), errors
        assert seeded.state() == before
        assert list(workdir.iterdir()) == []

    bad()


# ------------------------------------------- holes found by the properties, fixed

HUGE = 10**400


METADATA_BUGS = [
    pytest.param(
        {**NEXT_METADATA, "wallclock_time": HUGE},
        id="wallclock beyond float",
    ),
    pytest.param(
        {**NEXT_METADATA, "timestamp": -HUGE},
        id="timestamp beyond float",
    ),
    pytest.param(
        {**NEXT_METADATA, "triggers": ["simulation_time \ud800"]},
        id="lone surrogate in a trigger",
    ),
    pytest.param(
        {**NEXT_METADATA, "snapshot_filename": "/snapshots/\udcff.pack"},
        id="lone surrogate in a file name",
    ),
    pytest.param(
        {**NEXT_METADATA, "triggers": ["simulation_time\x00"]},
        id="NUL in a trigger",
    ),
]


@pytest.fixture(
    scope="module",
    params=["sqlite-file", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def shared_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per backend for the fixed holes; each test has its campaign."""
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path_factory.mktemp('holes') / 'holes.sqlite'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield server.url_for(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def hole(
    shared_database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Seeded]:
    seeded = Seeded(shared_database, tmp_path, campaign=f"hole {request.node.name}")
    try:
        yield seeded
    finally:
        seeded.close()


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize("metadata", METADATA_BUGS)
@pytest.mark.parametrize("entry", ["add_snapshot", "register_snapshot"])
def test_metadata_holes_stay_closed(hole: Seeded, entry: str, metadata: Any) -> None:
    call = partial(call_entry, hole.registry, entry)
    refused = hole.refuses("fixed hole", lambda: call(NEXT_INSTANCE, metadata))
    assert isinstance(refused, InvalidInputError)
    hole.finish_like_muscle3()


CONSTRUCTOR_BUGS = [
    pytest.param(
        {"campaign": 123},
        id="campaign not text",
    ),
    pytest.param(
        {"campaign": "c" * 300},
        id="campaign too long",
    ),
    pytest.param(
        {"campaign": "a\x00b"},
        id="NUL in campaign",
    ),
    pytest.param(
        {"snapshot_folder": 3},
        id="folder not a path",
    ),
    pytest.param(
        {"writer_timeout": math.nan},
        id="writer timeout NaN",
    ),
    pytest.param(
        {"writer_timeout": math.inf},
        id="writer timeout infinite",
    ),
    pytest.param(
        {"writer_timeout": "5"},
        id="writer timeout text",
    ),
    pytest.param(
        {"new_run": "no"},
        id="new_run not a bool",
    ),
    pytest.param(
        {"new_run": True, "resumed_from": 2**70},
        id="resumed_from beyond 64 bits",
    ),
    pytest.param({"database_url": b""}, id="empty database URL"),
    pytest.param({"database_url": ""}, id="empty database URL text"),
]


@pytest.mark.slow_on_postgresql
@pytest.mark.parametrize("arguments", CONSTRUCTOR_BUGS)
def test_constructor_holes_stay_closed(hole: Seeded, arguments: dict[str, Any]) -> None:
    hole.registry.close()
    options = {"campaign": hole.campaign, "database_url": hole.url, **arguments}
    folder = options.pop("snapshot_folder", hole.folder)
    hole.refuses(
        "fixed hole", lambda: SnapshotRegistry(STREAM.config, folder, **options)
    )
