"""The instruction-count benchmark counts the replay and only the replay.

Runs callgrind (valgrind): without it the end-to-end test is skipped with the
reason, except under ``CI=true``, which installs it (``.ci/run``) and fails
without it.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from instructions import (  # noqa: E402
    collected_instructions,
    replay_under_callgrind,
    write_payload,
)
from run import scenarios  # noqa: E402


@pytest.fixture
def small_stream(tmp_path: Path) -> tuple[Any, Path]:
    """run.py's smallest scenario and its stream as the benchmark's children read
    it; skips without valgrind (fails under CI, which installs it)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        message = "needs valgrind (apt-get install valgrind)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI installs it)")
        pytest.skip(message)
    (scenario,) = [s for s in scenarios(True) if s.name == "macro_micro n=1"]
    payload = tmp_path / "stream.pickle"
    write_payload(scenario, payload)
    return scenario, payload


def test_the_count_is_read_from_callgrind_s_log_and_a_zero_count_refused() -> None:
    log = "==7== Events    : Ir\n==7== Collected : 2746605188\n==7==\n"
    assert collected_instructions(log) == 2_746_605_188
    with pytest.raises(RuntimeError, match="counted no instructions"):
        collected_instructions(log.replace("2746605188", "0"))
    with pytest.raises(RuntimeError, match="counted no instructions"):
        collected_instructions("==7== some other output\n")


@pytest.mark.slow
def test_two_replays_count_the_same_and_leave_out_imports_and_opening(
    tmp_path: Path, small_stream: tuple[Any, Path]
) -> None:
    scenario, payload = small_stream
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(replay_under_callgrind, ROOT, label, payload, tmp_path)
            for label in ("first", "second")
        ]
        first, second = (future.result() for future in futures)
    assert first.registrations == len(scenario.stream.registrations) == 80
    assert first.workflow_snapshots == second.workflow_snapshots > 0
    # the same replay, the same count (dictionaries hashed alike in both)
    assert abs(first.instructions - second.instructions) < 0.02 * first.instructions
    # a registration is about a million instructions; starting Python and
    # importing snapreg, SQLAlchemy and MUSCLE3 are some ten billion
    assert 100_000 < first.per_registration < 5_000_000


@pytest.mark.slow
@pytest.mark.postgres
def test_a_replay_on_postgresql_counts_the_registering_process(
    tmp_path: Path, postgres_url: str, small_stream: tuple[Any, Path]
) -> None:
    scenario, payload = small_stream
    count = replay_under_callgrind(ROOT, "pg", payload, tmp_path, postgres_url)
    assert count.registrations == len(scenario.stream.registrations) == 80
    assert count.workflow_snapshots > 0
    assert 100_000 < count.per_registration < 5_000_000
