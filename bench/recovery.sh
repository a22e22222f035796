#!/usr/bin/env bash
# Benchmark (not a test): time to re-replicate after one node of 4 dies (3 copies), as MB/s of
# objects copied, first with no client, then with a client reading the VDI at the same time,
# then with fio doing 4k random writes (QD 8, over NBD through node 0): for that row, fio's
# IOPS and p99 latency before the kill (10 s) and during recovery; all in the same run.
# SIZE_MB (default 2048) is written first. Needs fio with its nbd engine.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-2048}
cargo build --release --workspace --bins >/dev/null 2>&1
B=target/release
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sdbench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
head -c "${SIZE_MB}M" /dev/urandom > "$W/data"
now() { date +%s.%N; }

# fio's "IOPS p99_ms" of a json result file
fio_figures() {
  # (fio stopped by SIGINT may write a line of its own before the JSON)
  python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]["write"]; print("%.0f IOPS p99 %.1f ms" % (j["iops"], j["clat_ns"]["percentile"]["99.000000"]/1e6))' "$1"
}
fio_writes() { # uri output [runtime]
  fio --name=w --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=8 \
    --size="${SIZE_MB}M" --time_based --runtime="${3:-3600}" \
    --output-format=json --output="$2" >/dev/null 2>&1
}

# run NAME CLIENT(0: none, 1: reader, 2: fio writes): prints "NAME objects MB seconds MB/s"
run() {
  local name=$1 reader=$2 port=$((20000 + RANDOM % 20000)) d="$W/$1"
  local nbd=$((port + 10))
  for i in 0 1 2 3; do
    $B/sheep -c "local:$d/shm" -p $((port + i)) --nbd-port $((nbd + i)) -z $i "$d/st$i"
    pids+=("$(cat "$d/st$i/sheep.pid")")
  done
  $B/dog cluster format --copies=3 -p $port >/dev/null
  $B/dog vdi create Bench "${SIZE_MB}M" -p $port
  $B/dog vdi write Bench -p $port < "$W/data"
  local lost
  lost=$(find "$d/st3/obj" -maxdepth 1 -type f | wc -l)
  local rpid=""
  if [ "$reader" = 1 ]; then
    ( while true; do $B/dog vdi read Bench -p $port > /dev/null 2>&1 || true; done ) &
    rpid=$!
  fi
  local uri="nbd://127.0.0.1:$nbd/Bench"
  if [ "$reader" = 2 ]; then
    fio_writes "$uri" "$d/before.json" 10
    fio_writes "$uri" "$d/during.json" &
    rpid=$!
    sleep 1
  fi
  local t0 t1
  t0=$(now)
  kill -9 "$(cat "$d/st3/sheep.pid")"
  sleep 0.2
  while true; do
    busy=0
    for i in 0 1 2; do
      [ -n "$($B/dog node recovery -r -p $((port + i)) 2>/dev/null)" ] && busy=1
      [ -n "$(ls -A "$d/st$i/obj/.stale" 2>/dev/null)" ] && busy=1
    done
    epoch=$($B/dog cluster info -p $port 2>/dev/null | grep -c "^20" || true)
    [ "$busy" = 0 ] && [ "$epoch" -ge 2 ] && break
    sleep 0.05
  done
  t1=$(now)
  if [ "$reader" = 2 ]; then
    pkill -INT -f "output=$d/during.json" || true
    wait "$rpid" || true
    rpid=""
  fi
  [ -n "$rpid" ] && kill "$rpid" 2>/dev/null || true
  awk -v n="$name" -v o="$lost" -v a="$t0" -v b="$t1" \
    'BEGIN { mb = o * 4; s = b - a; printf "%-24s %6d objects %7.0f MB %6.2f s %7.1f MB/s\n", n, o, mb, s, mb / s }'
  if [ "$reader" = 2 ]; then
    echo "  client before the kill:  $(fio_figures "$d/before.json")"
    echo "  client during recovery:  $(fio_figures "$d/during.json")"
  fi
  for i in 0 1 2; do kill -9 "$(cat "$d/st$i/sheep.pid")" 2>/dev/null || true; done
}
run no-client 0
run with-a-reading-client 1
run with-random-writes 2
