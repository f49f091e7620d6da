"""The PostgreSQL fixture without psycopg: a skip with the reason, a failure in CI.

A checkout installed without the ``postgres`` extra has no psycopg. Its PostgreSQL
tests must then be skipped and say why, as they are when the server is unreachable,
and fail under ``CI=true``, where every PostgreSQL test must run. Each case runs
this suite's own ``conftest.py`` in a pytest of its own, with psycopg hidden.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test runs a pytest of its own

CONFTEST = Path(__file__).with_name("conftest.py")

# Loaded with -p before the conftest: every later `import psycopg` fails as it
# does when the package is not installed.
HIDE_PSYCOPG = """
import sys

sys.modules["psycopg"] = None
"""

USES_POSTGRES = """
def test_uses_postgres(postgres_url):
    assert postgres_url
"""


def _run_without_psycopg(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *, ci: bool
) -> pytest.RunResult:
    monkeypatch.delenv("SNAPREG_REQUIRE_POSTGRES", raising=False)
    monkeypatch.setenv("CI", "true" if ci else "false")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(hide_psycopg=HIDE_PSYCOPG, test_uses_postgres=USES_POSTGRES)
    return pytester.runpytest_subprocess("-p", "hide_psycopg", "-rs")


def test_postgres_tests_skip_without_psycopg(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_without_psycopg(pytester, monkeypatch, ci=False)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED*PostgreSQL tests need psycopg (snapreg[[]postgres[]])*"]
    )
    assert result.ret == pytest.ExitCode.OK


def test_postgres_tests_fail_without_psycopg_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_without_psycopg(pytester, monkeypatch, ci=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*psycopg*CI requires it*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
