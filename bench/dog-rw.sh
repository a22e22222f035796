#!/usr/bin/env bash
# Benchmark (not a test): `dog vdi write` of SIZE (default 1 GiB) and `dog vdi read` back on a
# local 3-node, 3-copy cluster, next to `dd` of the same file to the same disk in the same run.
# Prints MB/s for each and the ratio ours/dd.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
cargo build --release --workspace --bins >/dev/null 2>&1
B=target/release
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sdbench.XXXXXX")
PORT=$((20000 + RANDOM % 20000))
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
head -c "${SIZE_MB}M" /dev/urandom > "$W/data"
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f", b / 1048576 / t }'; }
now() { date +%s.%N; }
t0=$(now); dd if="$W/data" of="$W/dd.out" bs=4M oflag=direct conv=fsync status=none; t1=$(now)
dd_w=$(mbps $((SIZE_MB << 20)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now); dd if="$W/dd.out" of=/dev/null bs=4M iflag=direct status=none; t1=$(now)
dd_r=$(mbps $((SIZE_MB << 20)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
for i in 0 1 2; do
  $B/sheep -c "local:$W/shm" -p $((PORT + i)) -z $i "$W/st$i"
  pids+=("$(cat "$W/st$i/sheep.pid")")
done
$B/dog cluster format --copies=3 -p $PORT >/dev/null
$B/dog vdi create Bench "$((SIZE_MB * 2))M" -p $PORT
t0=$(now); $B/dog vdi write Bench -p $PORT < "$W/data"; t1=$(now)
our_w=$(mbps $((SIZE_MB << 20)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now); $B/dog vdi read Bench 0 "${SIZE_MB}M" -p $((PORT + 1)) > "$W/back"; t1=$(now)
our_r=$(mbps $((SIZE_MB << 20)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')")
cmp "$W/back" "$W/data"
printf "%-32s %8s %8s %7s\n" "" "ours" "dd" "ratio"
printf "%-32s %6s MB/s %4s MB/s %6.2f\n" "write ${SIZE_MB} MiB (3 copies, sync)" "$our_w" "$dd_w" "$(awk -v a="$our_w" -v b="$dd_w" 'BEGIN{print a/b}')"
printf "%-32s %6s MB/s %4s MB/s %6.2f\n" "read ${SIZE_MB} MiB" "$our_r" "$dd_r" "$(awk -v a="$our_r" -v b="$dd_r" 'BEGIN{print a/b}')"
