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
stamp="$root/.venv/.snapreg-installed"
if ! cmp -s "$root/pyproject.toml" "$stamp" 2>/dev/null; then
  echo "Installing snapreg and its dependencies into .venv (once)" >&2
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$root[test,muscle3,postgres]"
  cp "$root/pyproject.toml" "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
