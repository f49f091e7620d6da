"""One run of the end-to-end benchmark: a real MUSCLE3 simulation under a manager.

A :class:`Case` is a model (macro–micro, or an ensemble of a sampler and N
members) with its checkpoints; a :class:`Setup` is the manager that runs it:
stock ``muscle_manager``, or ``snapreg manage`` on SQLite or PostgreSQL with a
policy. :func:`run_once` starts the manager as a user would (``--start-all
--run-dir``), in a session of its own, and measures the manager's process only
(the instances are its descendants and are left out):

- wall time: from starting the command to its exit;
- CPU time: user + system of the manager process (all its threads), read from
  ``/proc/<pid>/stat`` once it has exited but before it is reaped;
- peak memory: ``VmHWM`` from ``/proc/<pid>/status``, polled while it runs
  (a high-water mark: only growth in the last poll interval can be missed);
- workflow snapshot files written, whether the snapshot registry's thread died
  (its traceback in the manager's output or log), and the registration times
  each instance recorded (``e2e_components.py``).

Linux only (``/proc``, ``os.waitid``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from backends import postgres_url, sqlite_url
from e2e_components import SAMPLES_FILE

from snapreg.storage.engines import create_database_engine
from snapreg.storage.versions import ensure_schema

HERE = Path(__file__).resolve().parent
COMPONENTS = HERE / "e2e_components.py"
VENV_BIN = Path(sys.executable).parent
POLL = 0.05
_TICKS = os.sysconf("SC_CLK_TCK")

#: Simulated seconds between checkpoints.
CHECKPOINT_EVERY = {"frequent": 1.0, "rare": 10.0}


#: The models. Each component's program, ports and multiplicity (None: the
#: case's number of members), the conduits, and the settings. Every step is one
#: simulated second (macro model, sampler) or a fraction of one (micro model,
#: members); a member's step sleeps ``step_sleep`` s of wallclock time.
MODELS = {
    # a macro model of 50 steps; the micro model takes 10 steps per macro step
    # and snapshots between them when a checkpoint is due
    "macro_micro": (
        {"macro": ("macro", 1), "micro": ("micro", 1)},
        ("macro.o_i: micro.f_i", "micro.o_f: macro.s"),
        {
            "dt": 1.0,
            "macro.steps": 50,
            "macro.step_sleep": 0.02,
            "micro.steps": 10,
            "micro.step_sleep": 0.0,
        },
    ),
    # 20 rounds of one simulated second; every member is used once a round and
    # snapshots at the end of a use: with frequent checkpoints, every member
    # registers a snapshot at once, every round
    "ensemble": (
        {"sampler": ("sampler", 1), "member": ("member", None)},
        ("sampler.o_i: member.f_i", "member.o_f: sampler.s"),
        {"dt": 1.0, "rounds": 20, "steps": 1, "step_sleep": 0.05},
    ),
    # one round of 10 simulated seconds; every member snapshots between its
    # steps, independently of the others: any combination of their snapshots
    # is consistent with the sampler's final one, so policy "all" has
    # (snapshots per member) ** members workflow snapshots to write
    "independent": (
        {"sampler": ("sampler", 1), "member": ("micro", None)},
        ("sampler.o_i: member.f_i", "member.o_f: sampler.s"),
        {"dt": 10.0, "rounds": 1, "steps": 10, "step_sleep": 0.05},
    ),
}


@dataclass(frozen=True)
class Case:
    """A model of :data:`MODELS`, its number of members, and its checkpoints."""

    model: str
    members: int  # ensembles; 1 for macro_micro
    checkpoints: str  # "frequent" (every simulated second) or "rare" (every 10)

    @property
    def name(self) -> str:
        """How the table names the model."""
        if self.model == "macro_micro":
            return "macro–micro"
        if self.model == "independent":
            return f"independent n={self.members}"
        return f"ensemble n={self.members}"

    def configuration(self) -> str:
        """The yMMSL configuration: model, programs, settings and checkpoints."""
        components, conduits, settings = MODELS[self.model]
        lines = [
            "ymmsl_version: v0.2",
            "models:",
            f"  {self.model}:",
            "    components:",
        ]
        for name, (program, multiplicity) in components.items():
            ports = (
                "o_i: o_i, s: s"
                if program in ("macro", "sampler")
                else ("f_init: f_i, o_f: o_f")
            )
            lines += [
                f"      {name}:",
                f"        ports: {{{ports}}}",
                f"        implementation: {program}",
                f"        description: {program} (benchmark component)",
            ]
            if multiplicity is None:
                lines.append(f"        multiplicity: {self.members}")
        lines += ["    conduits:", *(f"      {conduit}" for conduit in conduits)]
        lines.append("programs:")
        for program, _ in components.values():
            lines += [
                f"  {program}:",
                f"    description: {program} (benchmark component)",
                f"    executable: {sys.executable}",
                f"    args: {COMPONENTS} {program}",
            ]
        lines += ["settings:", "  muscle_remote_log_level: WARNING"]
        lines += [f"  {name}: {value}" for name, value in settings.items()]
        lines += [
            "checkpoints:",
            "  at_end: true",
            "  simulation_time:",
            f"  - every: {CHECKPOINT_EVERY[self.checkpoints]}",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Setup:
    """A manager: stock, or snapreg on a database with a policy."""

    backend: str  # "stock", "sqlite" or "postgresql"
    policy: str = "all"

    @property
    def name(self) -> str:
        """How the table names it."""
        if self.backend == "stock":
            return "stock muscle_manager"
        database = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[self.backend]
        return f"snapreg {database} {self.policy}"


@dataclass
class Measurement:
    """What one run cost and what it left behind."""

    status: int | None  # the manager's exit status; None: killed at the timeout
    wall: float  # seconds
    cpu: float  # seconds, user + system, the manager process only
    peak: float  # MiB, the manager's peak resident set
    workflow_snapshots: int
    registry_died: bool
    registrations: list[float] = field(default_factory=list)  # seconds

    @property
    def completed(self) -> bool:
        """Whether the manager exited with status 0 within the time limit."""
        return self.status == 0


def run_once(case: Case, setup: Setup, folder: Path, timeout: float) -> Measurement:
    """Run ``case`` under ``setup`` in ``folder`` (created), and measure it.

    A snapreg database is fresh for every run, its schema created before the
    clock starts, as for every run of a campaign but the first.
    """
    folder.mkdir(parents=True)
    configuration = folder / f"{case.model}.ymmsl"
    configuration.write_text(case.configuration(), encoding="utf-8")
    run_dir = folder / "run"
    run_dir.mkdir()
    output = folder / "manager_output.txt"
    with _database(setup.backend) as url:
        if url is not None:
            engine = create_database_engine(url)
            try:
                ensure_schema(engine)
            finally:
                engine.dispose()
        command = manager_command(setup, url)
        command += ["--start-all", "--run-dir", str(run_dir), str(configuration)]
        status, wall, cpu, peak = measure(command, folder, output, timeout)
    return Measurement(
        status=status,
        wall=wall,
        cpu=cpu,
        peak=peak / 2**20,
        workflow_snapshots=len(list((run_dir / "snapshots").glob("snapshot_*.ymmsl"))),
        registry_died=registry_died(output, run_dir / "muscle3_manager.log"),
        registrations=registrations(run_dir),
    )


def manager_command(setup: Setup, url: str | None) -> list[str]:
    """The manager's command, before its own options and files."""
    if setup.backend == "stock":
        return [str(VENV_BIN / "muscle_manager")]
    assert url is not None
    return [str(VENV_BIN / "snapreg"), "manage", "--db", url, "--policy", setup.policy]


def startup_cost(setup: Setup, folder: Path) -> tuple[float, float, float]:
    """Wall s, CPU s and peak MiB of the manager stopping on a usage error.

    Its run directory does not exist: it stops while parsing its arguments,
    after its imports, before any instance or database is touched. That is the
    fixed part of what every run of it costs.
    """
    folder.mkdir(parents=True)
    url = None if setup.backend == "stock" else f"sqlite:///{folder / 'none.sqlite'}"
    command = manager_command(setup, url)
    command += ["--start-all", "--run-dir", str(folder / "missing"), "none.ymmsl"]
    output = folder / "output.txt"
    status, wall, cpu, peak = measure(command, folder, output, 120)
    if status in (0, None) or "Usage:" not in output.read_text(errors="replace"):
        raise RuntimeError(f"{command} did not stop on its usage: see {output}")
    return wall, cpu, peak / 2**20


@contextmanager
def _database(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        with sqlite_url() as url:
            yield url
    elif backend == "postgresql":
        with postgres_url() as url:
            yield url
    else:
        yield None


def environment() -> dict[str, str]:
    """The runs' environment: the venv first on PATH, no default database."""
    env = dict(os.environ)
    env.pop("SNAPREG_DATABASE_URL", None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def measure(
    command: list[str], cwd: Path, output: Path, timeout: float
) -> tuple[int | None, float, float, int]:
    """Run a command in a new session and measure its process alone.

    Returns:
        Its exit status (None when it was killed at the timeout), its wall time
        in seconds, its CPU time (user + system) in seconds, and its peak
        resident set in bytes.
    """
    exited: dict[str, float] = {}
    with open(output, "wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for_exit() -> None:
        # WNOWAIT leaves a zombie whose /proc/<pid>/stat still has its CPU times
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        exited["wall"] = time.perf_counter() - start
        exited["cpu"] = _cpu_seconds(process.pid)

    waiter = threading.Thread(target=wait_for_exit, daemon=True)
    waiter.start()
    peak = 0
    timed_out = False
    while waiter.is_alive():
        peak = max(peak, _peak_bytes(process.pid))
        if time.perf_counter() - start > timeout:
            timed_out = True
            _kill_group(process.pid)
            break
        waiter.join(POLL)
    waiter.join()
    process.wait()
    _kill_group(process.pid)  # an instance left behind by a failed run
    return (
        None if timed_out else process.returncode,
        exited["wall"],
        exited["cpu"],
        peak,
    )


def _kill_group(group: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its children's not included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _peak_bytes(pid: int) -> int:
    """A process's peak resident set so far (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def registry_died(*logs: Path) -> bool:
    """Whether the snapshot registry's thread died, from the manager's output.

    MUSCLE3's stops on its 100-files-per-second limit with ``Could not find an
    available filename``; any traceback through a ``snapshot_registry`` module
    counts too.
    """
    for log in logs:
        if not log.exists():
            continue
        text = log.read_text(errors="replace")
        if "Could not find an available filename" in text:
            return True
        if "Traceback" in text and "snapshot_registry" in text:
            return True
    return False


def registrations(run_dir: Path) -> list[float]:
    """Every instance's registration times, in seconds."""
    samples: list[float] = []
    for path in sorted((run_dir / "instances").glob(f"*/workdir/{SAMPLES_FILE}")):
        samples += [float(line) for line in path.read_text().split()]
    return samples
