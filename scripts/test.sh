#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite (extra arguments go to
# pytest). PostgreSQL tests use the server on 127.0.0.1:5432 (override with
# SNAPREG_TEST_POSTGRES_URL); without one they are skipped with the reason shown,
# except under CI=true, where they fail.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
