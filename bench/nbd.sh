#!/usr/bin/env bash
# Benchmark (not a test): fio over NBD against a local 3-node, 3-copy cluster, and in the same
# run against `qemu-nbd -f raw --cache=none` serving a raw file on the same disk (the local
# limit). Rows: 4 KiB random read/write at iodepth 1 and 32, 1 MiB sequential read/write.
# Prints IOPS, MB/s and p99 latency for each, and the ratio ours/limit of IOPS.
# Needs fio (with its nbd engine) and qemu-utils; RUNTIME (s per row, default 10), SIZE_MB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-10}
SIZE_MB=${SIZE_MB:-1024}
for t in fio qemu-nbd python3; do
  command -v $t >/dev/null || { echo "bench/nbd.sh needs $t (apt-get install fio qemu-utils)" >&2; exit 1; }
done
cargo build --release --workspace --bins >/dev/null 2>&1
B=target/release
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sdbench.XXXXXX")
PORT=$((20000 + RANDOM % 20000))
NBD=$((PORT + 100))
QNBD=$((PORT + 200))
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

for i in 0 1 2; do
  $B/sheep -c "local:$W/shm" -p $((PORT + i)) --nbd-port $((NBD + i)) -z $i "$W/st$i"
  pids+=("$(cat "$W/st$i/sheep.pid")")
done
$B/dog cluster format --copies=3 -p $PORT >/dev/null
$B/dog vdi create Bench "${SIZE_MB}M" -p $PORT
truncate -s "${SIZE_MB}M" "$W/limit.raw"
qemu-nbd -f raw --cache=none --aio=native -x Bench -p $QNBD -t "$W/limit.raw" &
pids+=($!)
disown
sleep 1

rows=(
  "randread-4k-qd1 randread 4k 1"
  "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd1 randwrite 4k 1"
  "randwrite-4k-qd32 randwrite 4k 32"
  "read-1m-qd8 read 1m 8"
  "write-1m-qd8 write 1m 8"
)
fill() { # allocate every object first so reads measure data, not holes
  fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1m --iodepth=8 \
    --size="${SIZE_MB}M" --output=/dev/null
}
run() { # uri name rw bs depth -> json file
  fio --name="$2" --ioengine=nbd --uri="$1" --rw="$3" --bs="$4" --iodepth="$5" \
    --size="${SIZE_MB}M" --time_based --runtime="$RUNTIME" --ramp_time=1 \
    --output-format=json --output="$W/$6-$2.json"
}
fill "nbd://127.0.0.1:$NBD/Bench"
fill "nbd://127.0.0.1:$QNBD/Bench"
for r in "${rows[@]}"; do
  set -- $r
  run "nbd://127.0.0.1:$NBD/Bench" "$1" "$2" "$3" "$4" ours
  run "nbd://127.0.0.1:$QNBD/Bench" "$1" "$2" "$3" "$4" limit
done

python3 - "$W" "${rows[@]}" <<'PY'
import json, sys
w, rows = sys.argv[1], [r.split()[0] for r in sys.argv[2:]]
def stats(path):
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p99 = side["clat_ns"]["percentile"].get("99.000000", 0) / 1000
    return side["iops"], side["bw_bytes"] / 1e6, p99
print(f"{'row':<18} {'ours IOPS':>10} {'MB/s':>8} {'p99 us':>9} | {'limit IOPS':>10} {'MB/s':>8} {'p99 us':>9} | {'ours/limit':>10}")
for r in rows:
    o, l = stats(f"{w}/ours-{r}.json"), stats(f"{w}/limit-{r}.json")
    ratio = o[0] / l[0] if l[0] else 0
    print(f"{r:<18} {o[0]:>10.0f} {o[1]:>8.1f} {o[2]:>9.0f} | {l[0]:>10.0f} {l[1]:>8.1f} {l[2]:>9.0f} | {ratio:>10.2f}")
PY
