#!/usr/bin/env bash
# Whole test suite: installs what it needs, builds, lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real clients the tests drive: qemu-img/qemu-io (qemu-utils), nbdinfo/nbdcopy (libnbd-bin),
# fio with its nbd engine, a standalone ZooKeeper (Debian's zookeeper package), corosync,
# curl for the HTTP API, Graphviz to read dog vdi graph, headless Chromium for the status
# page, qemu-system-x86_64 (qemu-system-x86) for the live-migration test.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v cc >/dev/null || need+=(gcc)
  command -v git >/dev/null || need+=(git)
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v nbdinfo >/dev/null || need+=(libnbd-bin)
  command -v fio >/dev/null || need+=(fio)
  [ -e /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
  command -v corosync >/dev/null || need+=(corosync)
  command -v curl >/dev/null || need+=(curl)
  command -v dot >/dev/null || need+=(graphviz)
  command -v chromium >/dev/null || need+=(chromium)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  # Debian's qemu-system-x86 can replace a newer qemu-utils (a backport) and take qemu-io away.
  command -v qemu-io >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
# The daemon is built with its failpoints: tests hold race windows open with them.
features=(--features sheep/failpoints)
cargo build --workspace --bins --locked "${features[@]}"
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
# --no-fail-fast: one run reports every failing test binary, not only the first.
cargo test --workspace --locked --no-fail-fast "${features[@]}" -- --test-threads=2
