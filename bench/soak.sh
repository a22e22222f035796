#!/usr/bin/env bash
# Soak (not a benchmark of speed): the fault checker of crates/sheep/tests/fault.rs for CYCLES
# cycles (default 100) or SECS seconds (default: no time limit), whichever ends first, on
# release binaries and with larger sizes than in CI. Each cycle kills -9 one node, kills two at
# once and takes an online snapshot while a writer runs (every third cycle also restarts the
# whole cluster), and compares every block through every node after each step.
#   bench/soak.sh [CYCLES] [SECS]
# FAULT_SEED repeats a run; FAULT_VDI_MB (1024), FAULT_TASKS (8), FAULT_MAX_WRITE_KB (128) and
# FAULT_ALLOW_ERRORS (client errors reported, not fatal) are passed on. Prints the checker's
# summary line (and what went wrong); the whole log is kept in a file named at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES=${1:-100}
SECS=${2:-0}
[ "$SECS" = 0 ] && SECS=$((100 * 365 * 86400))
cargo build --release --workspace --bins >/dev/null 2>&1
cargo test --release -p sheep --test fault --no-run >/dev/null 2>&1
LOG=$(mktemp "${TMPDIR:-/var/tmp}/soak.XXXXXX")
status=0
SHEEPDOG_BIN_DIR=$PWD/target/release \
  FAULT_CYCLES=$CYCLES FAULT_SECS=$SECS \
  FAULT_VDI_MB=${FAULT_VDI_MB:-1024} FAULT_TASKS=${FAULT_TASKS:-8} \
  FAULT_MAX_WRITE_KB=${FAULT_MAX_WRITE_KB:-128} \
  cargo test --release -p sheep --test fault -- --nocapture --exact \
  acknowledged_writes_survive_kills_snapshots_and_restarts >"$LOG" 2>&1 || status=$?
grep -E '^\[fault\] seed=' "$LOG" || true
grep -E '^(\[fault\] )?(cycles=|bad step:|bad block:|client error:|nemesis error:)' "$LOG" || true
if ! grep -q '^cycles=' "$LOG"; then
  echo "the checker stopped before its summary:" >&2
  grep -E 'panicked at|^\[fault\] step ' "$LOG" | tail -5 >&2 || true
  tail -20 "$LOG" >&2
fi
echo "log: $LOG"
exit $status
