#!/usr/bin/env bash
# Main job: build, start a local 3-node cluster (embedded `local` driver), format it with
# 3 copies and create a VDI on it. Stop it with `target/release/dog cluster shutdown`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
cargo build --release --workspace --bins
ST=${ST:-/tmp/st}
mkdir -p "$ST"
for i in 0 1 2; do
  target/release/sheep -c local "$ST/$i" -z "$i" -p "700$i"
done
target/release/dog cluster format --copies=3
target/release/dog node list
target/release/dog vdi create Alice 256G
target/release/dog vdi list
echo "Cluster running (stores in $ST). Stop it with: target/release/dog cluster shutdown"
