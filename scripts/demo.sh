#!/usr/bin/env bash
# Main job: build, start a local 3-node cluster (embedded `local` driver), format it with
# 3 copies and create a VDI on it. Stop it with `target/release/dog cluster shutdown`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if ! command -v qemu-img >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils
fi
cargo build --release --workspace --bins
ST=${ST:-/tmp/st}
mkdir -p "$ST"
for i in 0 1 2; do
  target/release/sheep -c local "$ST/$i" -z "$i" -p "700$i"
done
# A second run finds the cluster of the first one (its stores kept every byte): no format.
if ! target/release/dog cluster info | grep -q "Cluster status: running"; then
  target/release/dog cluster format --copies=3
fi
target/release/dog node list
target/release/dog vdi list -r | grep -q "^= Alice 0 " || target/release/dog vdi create Alice 256G
target/release/dog vdi list
if command -v qemu-img >/dev/null; then
  qemu-img info nbd://127.0.0.1:10809/Alice
fi
echo "Cluster running (stores in $ST); every VDI is served over NBD on 10809-10811, e.g."
echo "  qemu-img info nbd://127.0.0.1:10809/Alice"
echo "Stop it with: target/release/dog cluster shutdown"
