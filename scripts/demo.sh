#!/usr/bin/env bash
# The main job in one command: a real coupled MUSCLE3 simulation (the
# reaction-diffusion macro-micro example in examples/) runs through
# `snapreg manage` on the embedded SQLite default, its manager is killed the way a
# crash would end it, `snapreg manage --resume-latest` resumes it from the newest
# workflow snapshot in the database and lets it finish, and `snapreg campaigns`
# and `snapreg workflows` show what happened.
#
# Sets up .venv first if needed (scripts/setup.sh: quick when already installed).
# Everything happens in a fresh folder, example-run/ at the top of the repository
# (or $SNAPREG_DEMO_DIR); the database is example-run/snapreg.sqlite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$root/scripts/setup.sh"   # also puts .venv/bin first on PATH

example="$root/examples/reaction_diffusion"
demo_dir="${SNAPREG_DEMO_DIR:-$root/example-run}"
# Interrupt the first run once it has this many workflow snapshots (of 22).
interrupt_after=8
started_at=$SECONDS

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

if [ -e "$demo_dir" ]; then
  if [ ! -f "$demo_dir/.snapreg-demo" ]; then
    echo "$demo_dir exists and was not made by this demo; move it away first" >&2
    exit 1
  fi
  rm -rf "$demo_dir"
fi
mkdir -p "$demo_dir/run1" "$demo_dir/run2"   # muscle_manager wants --run-dir to exist
touch "$demo_dir/.snapreg-demo"
cd "$demo_dir"

# The example's programs are `python ${RD_EXAMPLE_DIR}/...`: the venv's python,
# which setup.sh put on PATH, and this folder.
export RD_EXAMPLE_DIR="$example"
# The embedded default, ./snapreg.sqlite, even if another database is configured.
unset SNAPREG_DATABASE_URL
# demo.ymmsl: a run of about 8 s, long enough to interrupt
configuration=("$example/rd.ymmsl" "$example/settings.ymmsl" "$example/demo.ymmsl")

manager=""
stop_manager() {
  if [ -n "$manager" ]; then
    kill -KILL -- "-$manager" 2>/dev/null || true
  fi
}
trap stop_manager EXIT

step "1. Run the simulation through snapreg manage (the same arguments as muscle_manager)"
echo "\$ snapreg manage --resume-latest --start-all --run-dir run1 rd.ymmsl settings.ymmsl demo.ymmsl"
# Job control gives the manager a process group of its own: killing that group
# ends the manager, MUSCLE3's agent and every instance at once, like a crash.
set -m
snapreg manage --resume-latest --start-all --run-dir run1 "${configuration[@]}" \
  </dev/null &
manager=$!
set +m

shopt -s nullglob
deadline=$((SECONDS + 120))
while true; do
  written=(run1/snapshots/snapshot_*.ymmsl)
  [ "${#written[@]}" -ge "$interrupt_after" ] && break
  if ! kill -0 "$manager" 2>/dev/null; then
    echo "The first run ended before it could be interrupted" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "No $interrupt_after workflow snapshots after 120 s; giving up" >&2
    exit 1
  fi
  sleep 0.1
done

step "2. Crash: SIGKILL the manager's process group after ${#written[@]} workflow snapshots"
kill -KILL -- "-$manager"
wait "$manager" 2>/dev/null || true
manager=""
echo "The manager and its instances are gone; the database keeps run 1:"
snapreg campaigns

step "3. Resume with one command"
echo "\$ snapreg manage --resume-latest --start-all --run-dir run2 rd.ymmsl settings.ymmsl demo.ymmsl"
snapreg manage --resume-latest --start-all --run-dir run2 "${configuration[@]}" </dev/null

step "4. The campaign: run 2 resumed from the newest workflow snapshot of run 1"
snapreg campaigns
snapreg workflows

step "Done in $((SECONDS - started_at)) s"
echo "Folder: $demo_dir (database snapreg.sqlite, run directories run1 and run2)."
echo "Final state: $demo_dir/run2/instances/macro/workdir/final_state.txt"
echo "Try: cd $demo_dir && $root/.venv/bin/snapreg show 1 && $root/.venv/bin/snapreg history macro --run 2"
echo "(snapreg is in $root/.venv/bin: source $root/.venv/bin/activate to have it on PATH)"
