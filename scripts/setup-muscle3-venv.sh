#!/usr/bin/env bash
# Creates .venv-muscle3-X.Y for one supported MUSCLE3 release (default: 0.10.0,
# the older one; .venv from setup.sh has the newest) and installs snapreg into it
# from this checkout, with the test extra and exactly that MUSCLE3 release.
# Idempotent: reinstalls only when pyproject.toml or the version changed.
# Usage: bash scripts/setup-muscle3-venv.sh [VERSION]; prints the venv's path last.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:-0.10.0}"
series="${version%.*}"
venv="$root/.venv-muscle3-$series"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "Creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.snapreg-installed"
wanted="$(cat "$root/pyproject.toml"; echo "muscle3==$version")"
if [ "$wanted" != "$(cat "$stamp" 2>/dev/null || true)" ]; then
  echo "Installing snapreg with muscle3 $version into $venv (once)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$root[test,postgres]" "muscle3==$version"
  printf '%s' "$wanted" >"$stamp"
fi
echo "$venv"
