#!/usr/bin/env bash
# Runs the tests that drive MUSCLE3's own code (pytest marker `muscle3`: manage,
# import, the registry oracle, ...) against one supported MUSCLE3 release, in its
# own venv (.venv-muscle3-X.Y, made by setup-muscle3-venv.sh). The main suite
# (scripts/test.sh) runs them on the newest release; CI runs this for the others.
# Usage: bash scripts/test-muscle3.sh VERSION [pytest arguments]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:?usage: test-muscle3.sh VERSION [pytest arguments]}"
shift
venv="$(bash "$root/scripts/setup-muscle3-venv.sh" "$version" | tail -n 1)"
installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("muscle3"))')"
if [ "$installed" != "$version" ]; then
  echo "FAIL: $venv has muscle3 $installed, not $version" >&2
  exit 1
fi
echo "Running the muscle3-marked tests on MUSCLE3 $installed" >&2
cd "$root"
# pytest exits 5 when the marker selects nothing: that fails this script too.
exec "$venv/bin/python" -m pytest -m muscle3 "$@"
