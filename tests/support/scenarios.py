"""The couplings MUSCLE3's snapshot tests exercise, as small real simulations.

Each :class:`Scenario` is a yMMSL model with settings and checkpoints whose
components are the small programs in ``scenario_components.py``. A scenario is
run by the stock ``muscle_manager`` or by the same manager with snapreg swapped
in by name (``rebound_manager.py``), in the same way, so that the two can be
compared file by file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ymmsl

from . import simulation
from .scenario_components import RESUMED_AT

HERE = Path(__file__).resolve().parent
COMPONENTS = HERE / "scenario_components.py"
REBOUND_MANAGER = HERE / "rebound_manager.py"

Manager = Literal["stock", "snapreg"]
MANAGERS: tuple[Manager, ...] = ("stock", "snapreg")

#: MUSCLE3's names for workflow snapshot files: the second they were taken,
#: then ``_1``, ``_2``, ... for more in the same second.
WORKFLOW_SNAPSHOT_NAME = re.compile(r"snapshot_\d{8}_\d{6}(_[1-9]\d*)?\.ymmsl")

#: One workflow snapshot's resume section: (instance, snapshot file relative to
#: the folder holding the runs of one manager).
ResumeMapping = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scenario:
    """One coupling, with what to resume from.

    Attributes:
        name: Its name, also the model's name and so snapreg's campaign.
        components: yMMSL text of the model's ``components`` and ``conduits``
            (indented as under ``models: <name>:``).
        settings: yMMSL text of ``settings`` and ``checkpoints`` (top level).
        resume_from: Which workflow snapshot of the first run the second run
            resumes from, counted in the order they were written.
        matching_timelines: yMMSL text of the model's ``matching_timelines``
            (indented as ``components``), for yMMSL versions that check
            timelines (0.18 on); older ones know no timelines.
    """

    name: str
    components: str
    settings: str
    resume_from: int
    matching_timelines: str = ""

    def implementations(self) -> list[str]:
        """The component programs the model uses."""
        return sorted(set(re.findall(r"implementation: (\w+)", self.components)))

    def configuration(self) -> str:
        """The whole yMMSL configuration, with programs for the components."""
        programs = "".join(
            f"  {name}:\n"
            f"    description: {name} (scenario component)\n"
            f"    executable: {sys.executable}\n"
            f"    args: {COMPONENTS} {name}\n"
            for name in self.implementations()
        )
        timelines = ""
        if self.matching_timelines and hasattr(ymmsl.v0_2, "resolve_timelines"):
            timelines = f"    matching_timelines:\n{self.matching_timelines}"
        return (
            "ymmsl_version: v0.2\n"
            f"models:\n  {self.name}:\n{self.components}{timelines}"
            f"programs:\n{programs}{self.settings}"
        )


def _model(components: str, conduits: str) -> str:
    def indented(text: str) -> str:
        return "".join(f"      {line}\n" for line in text.strip("\n").splitlines())

    return f"    components:\n{indented(components)}    conduits:\n{indented(conduits)}"


_MACRO = """
macro:
  ports: {o_i: o_i, s: s}
  implementation: macro
  description: sends its step out and expects it back
"""

_MICRO = """
micro:
  ports: {f_init: f_i, o_f: o_f}
  implementation: micro
  description: integrates and snapshots between macro steps
"""

# A macro run of ten steps from t = 0.1 in steps of 0.15; each micro use runs
# 0.08 in eight steps. Snapshots every 0.4 and at the end.
_MACRO_MICRO_SETTINGS = """
settings:
  macro.t0: 0.1
  macro.dt: 0.15
  macro.t_max: 1.6
  micro.dt: 0.01
  micro.t_max: 0.08
  muscle_remote_log_level: WARNING
checkpoints:
  at_end: true
  simulation_time:
  - every: 0.4
"""

_MACRO_MICRO_CONDUITS = """
macro.o_i: micro.f_i
micro.o_f: macro.s
"""

MACRO_MICRO = Scenario(
    "macro_micro",
    _model(_MACRO + _MICRO, _MACRO_MICRO_CONDUITS),
    _MACRO_MICRO_SETTINGS,
    resume_from=3,
)

MACRO_STATELESS_MICRO = Scenario(
    "macro_stateless_micro",
    _model(
        _MACRO
        + _MICRO.replace("implementation: micro", "implementation: stateless_micro"),
        _MACRO_MICRO_CONDUITS,
    ),
    _MACRO_MICRO_SETTINGS,
    resume_from=2,
)

MACRO_VECTOR_MICRO = Scenario(
    "macro_vector_micro",
    _model(
        _MACRO.replace("implementation: macro", "implementation: macro_vector")
        + _MICRO
        + "  multiplicity: 2\n",
        _MACRO_MICRO_CONDUITS,
    ),
    _MACRO_MICRO_SETTINGS,
    resume_from=4,
)

MACRO_TRANSFORMER_MICRO = Scenario(
    "macro_transformer_micro",
    _model(
        _MACRO
        + _MICRO
        + """
to_micro:
  ports: {f_init: f_i, o_f: o_f}
  implementation: transformer
  description: converts macro output to micro input
from_micro:
  ports: {f_init: f_i, o_f: o_f}
  implementation: transformer
  description: converts micro output to macro input
""",
        """
macro.o_i: to_micro.f_i
to_micro.o_f: micro.f_i
micro.o_f: from_micro.f_i
from_micro.o_f: macro.s
""",
    ),
    _MACRO_MICRO_SETTINGS,
    resume_from=4,
)

# Four links, each working 1.5 in steps of 0.15 after the one before it: link k
# covers [1.5 (k - 1), 1.5 k]. Checkpoints fall inside some links and not others.
DISPATCH = Scenario(
    "dispatch",
    _model(
        "".join(
            f"""
link{k}:
  ports: {{f_init: f_i, o_f: o_f}}
  implementation: relay
  description: link {k} of the chain
"""
            for k in range(1, 5)
        ),
        "".join(f"link{k}.o_f: link{k + 1}.f_i\n" for k in range(1, 4)),
    ),
    """
settings:
  dt: 0.15
  t_max: 1.5
  muscle_remote_log_level: WARNING
checkpoints:
  at_end: true
  simulation_time:
  - every: 2.0
  - at: [1.3, 2.6]
""",
    resume_from=4,
)

# Two partners in lockstep from t = 0.2, 24 steps of 0.1.
INTERACT = Scenario(
    "interact",
    _model(
        """
left:
  ports: {o_i: o_i, s: s}
  implementation: partner
  description: one partner
right:
  ports: {o_i: o_i, s: s}
  implementation: partner
  description: the other partner
""",
        """
left.o_i: right.s
right.o_i: left.s
""",
    ),
    """
settings:
  t0: 0.2
  dt: 0.1
  t_max: 2.4
  muscle_remote_log_level: WARNING
checkpoints:
  simulation_time:
  - every: 0.8
    start: 0.5
    stop: 2.0
  - at: [2.3]
""",
    resume_from=1,
    # the partners step together: their timelines are one
    matching_timelines="      left: right\n",
)

# A driver asking three caches and a calculator each step; the caches ask their
# calculators every few uses. Several conduits join the same pair of components
# (cache_a to calc_a and back, cache_a to the driver, cache_b to cache_a and
# cache_c), one output feeds four inputs, and some ports are left unconnected.
COMPLEX_COUPLING = Scenario(
    "complex_coupling",
    _model(
        """
driver:
  ports: {o_i: state_out, s: Ai Bi Ci Di}
  implementation: driver
  description: asks for A, B, C and D each step
cache_a:
  ports:
    f_init: in1 in2
    o_i: sub_out1 sub_out2
    s: sub_in1 sub_in2
    o_f: out1 out2
  implementation: cache
  description: caches calc_a
cache_b:
  ports: {f_init: in1, o_i: sub_out1, s: sub_in1, o_f: out1}
  implementation: cache
  description: caches calc_b
cache_c:
  ports: {f_init: in1 in2, o_i: sub_out1 sub_out2, s: sub_in1, o_f: out1}
  implementation: cache
  description: caches calc_c
calc_a:
  ports: {f_init: in1 in2, o_f: out1 out2}
  implementation: echo
  description: calculates A
calc_b:
  ports: {f_init: in1, o_f: out1}
  implementation: echo
  description: calculates B
calc_c:
  ports: {f_init: in1 in2, o_f: out1}
  implementation: echo
  description: calculates C
calc_d:
  ports: {f_init: in1, o_f: out1}
  implementation: echo
  description: calculates D
""",
        """
driver.state_out: [cache_a.in1, cache_b.in1, cache_c.in1, calc_d.in1]
cache_a.out1: driver.Ai
cache_a.out2: driver.Bi
cache_a.sub_out1: calc_a.in1
cache_a.sub_out2: calc_a.in2
calc_a.out1: cache_a.sub_in1
calc_a.out2: cache_a.sub_in2
cache_b.out1: [cache_a.in2, cache_c.in2]
cache_b.sub_out1: calc_b.in1
calc_b.out1: cache_b.sub_in1
cache_c.out1: driver.Ci
cache_c.sub_out1: calc_c.in1
cache_c.sub_out2: calc_c.in2
calc_c.out1: cache_c.sub_in1
calc_d.out1: driver.Di
""",
    ),
    """
settings:
  dt: 0.5
  steps: 8
  cache_a.refresh: 2
  cache_b.refresh: 3
  cache_c.refresh: 4
  muscle_remote_log_level: WARNING
checkpoints:
  at_end: true
  simulation_time:
  - every: 1.2
""",
    resume_from=3,
)

SCENARIOS = (
    MACRO_MICRO,
    MACRO_STATELESS_MICRO,
    MACRO_VECTOR_MICRO,
    MACRO_TRANSFORMER_MICRO,
    DISPATCH,
    INTERACT,
    COMPLEX_COUPLING,
)


def environment(database_url: str | None = None) -> dict[str, str]:
    """The runs' environment: the venv first on PATH, and snapreg's database.

    ``$SNAPREG_DATABASE_URL`` is the given URL, or unset so that snapreg picks
    its default place.
    """
    env = simulation.environment()
    env.pop("SNAPREG_DATABASE_URL", None)
    if database_url is not None:
        env["SNAPREG_DATABASE_URL"] = database_url
    return env


def run(
    scenario: Scenario,
    manager: Manager,
    run_dir: Path,
    *extra_files: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = simulation.RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a scenario to the end with ``--start-all`` in ``run_dir`` (created).

    Args:
        scenario: What to run.
        manager: The stock ``muscle_manager``, or the same with snapreg's
            registry swapped in by name.
        run_dir: The run directory; its parent gets the configuration file.
        extra_files: yMMSL files appended to the configuration, e.g. a
            workflow snapshot to resume from.
        env: The environment; default: :func:`environment`.
        timeout: Seconds before the run's processes are killed and
            ``subprocess.TimeoutExpired`` is raised.
    """
    run_dir.mkdir(parents=True)
    configuration = run_dir.parent / f"{scenario.name}.ymmsl"
    configuration.write_text(scenario.configuration(), encoding="utf-8")
    if manager == "stock":
        command = [str(simulation.VENV_BIN / "muscle_manager")]
    else:
        command = [sys.executable, str(REBOUND_MANAGER)]
    command += ["--start-all", "--run-dir", str(run_dir), str(configuration)]
    command += [str(path) for path in extra_files]
    return simulation.run(
        command,
        cwd=run_dir.parent,
        timeout=timeout,
        env=environment() if env is None else env,
    )


def workflow_snapshot_files(run_dir: Path) -> list[Path]:
    """A run's workflow snapshot files, in the order they were written.

    Names carry the second they were taken; within a second the first has no
    suffix, the next ``_1``, ``_2``, ...
    """

    def written(path: Path) -> tuple[str, int]:
        stem, _, counter = path.stem.rpartition("_")
        if stem.count("_") == 2 and counter.isdigit():
            return stem, int(counter)
        return path.stem, 0

    folder = run_dir / "snapshots"
    return sorted(folder.glob("snapshot_*.ymmsl"), key=written)


def resume_mapping(path: Path, root: Path) -> ResumeMapping:
    """A workflow snapshot file's resume section, with paths relative to ``root``.

    ``root`` holds all runs of one manager, so that resume sections of stock and
    snapreg runs compare equal when they name the same instance snapshots.
    """
    resume = ymmsl.load(path).resume
    return frozenset(
        (str(instance), os.path.relpath(snapshot, root))
        for instance, snapshot in resume.items()
    )


def resume_mappings(run_dir: Path, root: Path) -> Counter[ResumeMapping]:
    """The multiset of a run's workflow snapshots' resume sections."""
    return Counter(
        resume_mapping(path, root) for path in workflow_snapshot_files(run_dir)
    )


def resumed_instances(run_dir: Path) -> set[str]:
    """The instances of a run that resumed from a snapshot, by what they printed.

    Each component says so on its standard output, which the manager keeps in
    ``instances/<instance>/stdout.txt``.
    """
    return {
        stdout.parent.name
        for stdout in (run_dir / "instances").glob("*/stdout.txt")
        if RESUMED_AT in stdout.read_text(encoding="utf-8")
    }


def member_kinds(path: Path) -> dict[str, str]:
    """Each member of a workflow snapshot file: ``Final`` or ``Intermediate``.

    From the table in its description, one row per member: instance, simulation
    time, wallclock time and kind.
    """
    description = ymmsl.load(path).description or ""
    rows = (line.split() for line in description.splitlines())
    return {
        cells[0]: cells[-1]
        for cells in rows
        if cells[-1:] in (["Final"], ["Intermediate"])
    }
