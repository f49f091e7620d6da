#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite (extra arguments go to
# pytest). PostgreSQL tests use the server on 127.0.0.1:5432 (override with
# SNAPREG_TEST_POSTGRES_URL); without one they are skipped with the reason shown,
# except under CI=true, where they fail.
#
# --fast (first argument): the fast loop, only the tests not marked slow (unit,
# property and oracle tests; no killed processes, no real MUSCLE3 runs, no child
# processes, PostgreSQL only where it is quick), spread over every core
# (pytest-xdist, -n auto; add -n 0 to run them in one process).
#
# pytest's exit status is this script's: 5, "no tests ran" (a -k or -m that
# selects nothing), fails like any other non-zero.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
selection=()
if [ "${1:-}" = "--fast" ]; then
  shift
  selection=(-m "not slow" -n auto)
fi
source "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest ${selection[@]+"${selection[@]}"} "$@"
