#!/usr/bin/env bash
# Benchmark (not a test): what counting requests costs, in instructions, independent of how
# busy the machine is. One sheep (1 copy, -n) runs under valgrind's callgrind twice: once with
# only a format and a VDI create, once with WRITES random 4 KiB writes at QD32 over NBD (fio)
# on top; the difference over WRITES is the instructions per write. Prints it, and the part
# spent in the code of `sheep::metrics` and prometheus-client. Give the path of another sheep binary
# (built without metrics, e.g. from an older commit) as $1 to print its instructions per write
# in the same run (THIS=PATH measures another build than target/release; NO_BUILD=1 skips
# the build; KEEP=1 keeps callgrind's files). Needs valgrind and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
WRITES=${WRITES:-4096}
for t in valgrind callgrind_annotate fio; do
  command -v $t >/dev/null || { echo "bench/metrics-cost.sh needs $t (apt-get install valgrind fio)" >&2; exit 1; }
done
[ -n "${NO_BUILD:-}" ] || cargo build --release -p sheep -p dog --bins >/dev/null 2>&1
THIS=${THIS:-target/release/sheep}
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sdcost.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT

run() { # name sheep-binary writes -> prints "total-instructions metrics-instructions"
  local name=$1 bin=$2 n=$3 port=$((20000 + RANDOM % 20000))
  local nbd=$((port + 100)) out="$W/$name-$n.out" http=()
  # A binary from before metrics has no HTTP port.
  "$bin" --help | grep -q -- --http-port && http=(--http-port $((port + 200)))
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" -f -n -c "local:$W/shm-$name-$n" -p $port --nbd-port $nbd "${http[@]}" \
    "$W/st-$name-$n" 2>"$W/$name-$n.valgrind" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do # at most 60 s to start under valgrind
    target/release/dog node list -p $port >/dev/null 2>&1 && break
    sleep 0.1
  done
  target/release/dog cluster format --copies=1 -p $port >/dev/null
  target/release/dog vdi create Bench 64M -p $port
  if [ "$n" -gt 0 ]; then
    fio --name=cost --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/Bench" --rw=randwrite --bs=4k \
      --iodepth=32 --size=64M --number_ios="$n" --output=/dev/null
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  callgrind_annotate --threshold=100 "$out" >"$out.txt" 2>/dev/null
  local total metrics
  total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out.txt")
  # Instructions of the code of sheep's metrics module and of prometheus-client, inlined or
  # not (the clock reads a request's latency takes are not in it).
  metrics=$(awk '/sheep\/src\/metrics\.rs:|prometheus-client-/ {gsub(",", "", $1); m += $1} END {print m + 0}' "$out.txt")
  [ -n "${KEEP:-}" ] && echo "kept $W" >&2
  echo "$total $metrics"
}

measure() { # name binary -> "name instructions/write metrics-instructions/write"
  local t0 m0 t1 m1
  read -r t0 m0 < <(run "$1" "$2" 0)
  read -r t1 m1 < <(run "$1" "$2" "$WRITES")
  echo "$1 $(((t1 - t0) / WRITES)) $(((m1 - m0) / WRITES))"
}

printf '%-10s %16s %26s\n' sheep "instructions/write" "of which in metrics code"
read -r n per m < <(measure this "$THIS")
printf '%-10s %16s %26s\n' "$n" "$per" "$m"
if [ -n "${1:-}" ]; then
  read -r n per _ < <(measure baseline "$1")
  printf '%-10s %16s\n' "$n" "$per"
fi
