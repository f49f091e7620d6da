#!/usr/bin/env bash
# Creates .venv and installs snapreg with every extra the demo and the tests need.
# Idempotent and quick when nothing changed: the install is redone only when
# pyproject.toml differs from the one last installed. Sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "Creating $root/.venv" >&2
  "$python" -m venv "$root/.venv"
fi
# The extras accept every supported MUSCLE3 release; the main environment has the
# newest (scripts/setup-muscle3-venv.sh makes one per older release).
muscle3_version="0.11.0"
stamp="$root/.venv/.snapreg-installed"
wanted="$(cat "$root/pyproject.toml"; echo "muscle3==$muscle3_version")"
if [ "$wanted" != "$(cat "$stamp" 2>/dev/null || true)" ]; then
  echo "Installing snapreg and its dependencies into .venv (once)" >&2
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$root[test,muscle3,postgres]" "muscle3==$muscle3_version"
  printf '%s' "$wanted" >"$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
