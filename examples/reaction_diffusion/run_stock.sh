#!/bin/bash
# Run the checkpointing reaction-diffusion example with the stock MUSCLE3
# manager.
#
#   run_stock.sh RUN_DIR [EXTRA.ymmsl ...]
#
# EXTRA files are appended after rd.ymmsl and settings.ymmsl, e.g. a workflow
# snapshot to resume from (RUN_DIR/snapshots/snapshot_*.ymmsl) or a settings
# overlay such as long.ymmsl. Set MUSCLE_MANAGER_BIN to use another manager
# executable; by default the one in the repository's .venv (made by
# scripts/setup.sh) is used, and its bin dir is put first on PATH so that
# `python` in rd.ymmsl can import libmuscle.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "Usage: $0 RUN_DIR [EXTRA.ymmsl ...]" >&2
    exit 2
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANAGER="${MUSCLE_MANAGER_BIN:-$HERE/../../.venv/bin/muscle_manager}"
MANAGER="$(cd "$(dirname "$MANAGER")" && pwd)/$(basename "$MANAGER")"

RUN_DIR="$1"
shift
mkdir -p "$RUN_DIR"   # muscle_manager requires --run-dir to exist

# Resolve extra files before we cd away
EXTRA=()
for f in "$@"; do
    EXTRA+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

export RD_EXAMPLE_DIR="$HERE"
export PATH="$(dirname "$MANAGER"):$PATH"

cd "$HERE"
exec "$MANAGER" --start-all --run-dir "$RUN_DIR" \
    rd.ymmsl settings.ymmsl ${EXTRA[@]+"${EXTRA[@]}"}
