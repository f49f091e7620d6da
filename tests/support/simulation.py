"""Real MUSCLE3 runs of the reaction-diffusion example, for end-to-end tests.

Every process is started in a session of its own and killed as a process group,
so that no manager, instantiator agent or instance outlives a test, and every wait
is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import ymmsl

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "examples" / "reaction_diffusion"
VENV_BIN = Path(sys.executable).parent
MODEL_FILES = (str(EXAMPLE / "rd.ymmsl"), str(EXAMPLE / "settings.ymmsl"))
#: A run of the example takes about 4 s; startup alone can take that on a busy host.
RUN_TIMEOUT = 120.0
FINAL_STATE = Path("instances") / "macro" / "workdir" / "final_state.txt"

ResumeMappings = set[frozenset[tuple[str, str]]]


def environment() -> dict[str, str]:
    """The environment the example needs: its folder, and the venv's python."""
    return {
        **os.environ,
        "RD_EXAMPLE_DIR": str(EXAMPLE),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def slow_overlay(folder: Path, step_sleep: float = 0.02) -> Path:
    """A settings file that makes each macro step sleep, to interrupt a run.

    Sleeping changes the wallclock time only, never the computed state.
    """
    path = folder / "slow.ymmsl"
    path.write_text(
        f"ymmsl_version: v0.2\nsettings:\n  macro.step_sleep: {step_sleep}\n",
        encoding="utf-8",
    )
    return path


def snapreg_command(*args: str) -> list[str]:
    """The installed ``snapreg`` console script with arguments."""
    return [str(VENV_BIN / "snapreg"), *args]


def manage_command(
    database_url: str,
    run_dir: Path,
    *extra_files: Path,
    options: Sequence[str] = (),
) -> list[str]:
    """``snapreg manage`` for the example in ``run_dir`` (created here)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return snapreg_command(
        "manage",
        "--db",
        database_url,
        *options,
        "--start-all",
        "--run-dir",
        str(run_dir),
        *MODEL_FILES,
        *map(str, extra_files),
    )


def stock_command(run_dir: Path, *extra_files: Path) -> list[str]:
    """The stock ``muscle_manager`` for the example in ``run_dir`` (created here)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(VENV_BIN / "muscle_manager"),
        "--start-all",
        "--run-dir",
        str(run_dir),
        *MODEL_FILES,
        *map(str, extra_files),
    ]


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group, as a crash would end it, and reap it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def group_gone(process_group: int, timeout: float = 10.0) -> bool:
    """Whether every process of the group has gone within the time limit.

    Killed processes linger as zombies until their new parent reaps them.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process_group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@contextmanager
def started(
    command: Sequence[str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a command in a new session; kill its group when the block ends."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            kill_group(process)


def run(
    command: Sequence[str],
    cwd: Path,
    timeout: float = RUN_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to the end in a new session, within a time limit.

    On timeout the whole process group is killed before the error, which
    carries the command's output, is raised. ``env`` replaces
    :func:`environment` when given.
    """
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=environment() if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
        # with what the command wrote before it was killed, to tell why
        raise subprocess.TimeoutExpired(
            process.args, timeout, output=stdout, stderr=stderr
        ) from None
    finally:
        # e.g. an instance left behind by a failed run
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for_workflow_snapshots(
    run_dir: Path, count: int, process: subprocess.Popen[bytes], timeout: float
) -> int:
    """Wait until the run has written ``count`` workflow snapshot files.

    Raises:
        AssertionError: the process ended first, or the time ran out.
    """
    deadline = time.monotonic() + timeout
    folder = run_dir / "snapshots"
    while time.monotonic() < deadline:
        found = len(list(folder.glob("snapshot_*.ymmsl"))) if folder.is_dir() else 0
        if found >= count:
            return found
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (status {process.returncode}) after {found}"
                f" workflow snapshots, before {count}"
            )
        time.sleep(0.02)
    raise AssertionError(f"no {count} workflow snapshots in {timeout} s")


def resume_mappings(run_dir: Path) -> ResumeMappings:
    """The resume sections of a run's workflow snapshot files.

    Each is a set of (instance, snapshot file relative to the run directory), so
    that runs in different directories compare equal when they resume the same
    instances from the same snapshot files.
    """
    mappings: ResumeMappings = set()
    for path in sorted((run_dir / "snapshots").glob("snapshot_*.ymmsl")):
        configuration = ymmsl.load(path)
        mappings.add(
            frozenset(
                (str(instance), str(Path(snapshot).relative_to(run_dir)))
                for instance, snapshot in configuration.resume.items()
            )
        )
    return mappings
