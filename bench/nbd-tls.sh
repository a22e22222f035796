#!/usr/bin/env bash
# Benchmark (not a test): the cost of NBD over TLS. Two local 3-node, 3-copy clusters on the
# same disk, one plain and one started with --nbd-tls-creds (certificates made with openssl
# for this run), each with a VDI; fio's nbd engine (libnbd) drives nbd://... and
# nbds://...?tls-certificates=DIR in turn, row by row. Rows: 4 KiB random write at iodepth 32,
# 1 MiB sequential write and read at iodepth 8. Prints IOPS, MB/s and p99 latency of each and
# the ratio TLS/plain. Needs fio (with its nbd engine, libnbd built with gnutls) and openssl;
# RUNTIME (s per row, default 10), SIZE_MB (default 1024).
# fio's nbd engine refuses ?tls-certificates=DIR (libnbd allows local files in URIs only when
# asked to, and fio does not ask), so the client certificate goes where libnbd looks by
# default: $HOME/.pki/libnbd of a non-root user (/etc/pki/libnbd for root, left alone here).
# Run as root, fio runs as nobody with HOME in the bench's directory, for both kinds of rows.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-10}
SIZE_MB=${SIZE_MB:-1024}
for t in fio openssl python3; do
  command -v $t >/dev/null || { echo "bench/nbd-tls.sh needs $t (apt-get install fio openssl)" >&2; exit 1; }
done
cargo build --release --workspace --bins >/dev/null 2>&1
B=target/release
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sdbench.XXXXXX")
PORT=$((20000 + RANDOM % 20000))
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT

# A CA, a server certificate for 127.0.0.1/localhost and a client certificate, both by the CA.
C="$W/home/.pki/libnbd"
mkdir -p "$W/server" "$C"
ossl() { openssl "$@" 2>/dev/null; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
ossl req -x509 "${ec[@]}" -keyout "$W/ca-key.pem" -out "$W/ca-cert.pem" -days 2 \
  -subj /CN=bench-ca -addext basicConstraints=critical,CA:true \
  -addext keyUsage=critical,keyCertSign,cRLSign
leaf() { # dir name cn extensions
  ossl req "${ec[@]}" -keyout "$1/$2-key.pem" -out "$W/$2.csr" -subj "/CN=$3"
  ossl x509 -req -in "$W/$2.csr" -CA "$W/ca-cert.pem" -CAkey "$W/ca-key.pem" \
    -CAcreateserial -days 2 -out "$1/$2-cert.pem" -extfile <(printf '%b' "$4")
  cp "$W/ca-cert.pem" "$1/ca-cert.pem"
}
leaf "$W/server" server localhost \
  "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
leaf "$C" client client \
  "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
client=(env HOME="$W/home")
if [ "$(id -u)" = 0 ]; then
  chmod 755 "$W"
  chown -R nobody "$W/home"
  client=(setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$W/home")
fi

start() { # name first-port extra-options...
  local name=$1 base=$2
  shift 2
  for i in 0 1 2; do
    $B/sheep -c "local:$W/$name-shm" -p $((base + i)) --nbd-port $((base + 100 + i)) \
      --http-port 0 -z $i "$@" "$W/$name-st$i"
    pids+=("$(cat "$W/$name-st$i/sheep.pid")")
  done
  $B/dog cluster format --copies=3 -p "$base" >/dev/null
  $B/dog vdi create Bench "${SIZE_MB}M" -p "$base"
}
start plain "$PORT"
start tls $((PORT + 10)) --nbd-tls-creds "$W/server"
PLAIN="nbd://127.0.0.1:$((PORT + 100))/Bench"
TLS="nbds://127.0.0.1:$((PORT + 110))/Bench"
# TLS is really required: a plain client of the TLS cluster is refused.
if "${client[@]}" fio --name=probe --ioengine=nbd --uri="nbd://127.0.0.1:$((PORT + 110))/Bench" --rw=read \
  --bs=4k --size=4k --output=/dev/null >/dev/null 2>&1; then
  echo "the TLS cluster served a plain client" >&2
  exit 1
fi

rows=(
  "randwrite-4k-qd32 randwrite 4k 32"
  "write-1m-qd8 write 1m 8"
  "read-1m-qd8 read 1m 8"
)
fill() { # allocate every object first so reads measure data, not holes
  "${client[@]}" fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1m --iodepth=8 \
    --size="${SIZE_MB}M" --output=/dev/null
}
run() { # uri name rw bs depth side -> json file
  "${client[@]}" fio --name="$2" --ioengine=nbd --uri="$1" --rw="$3" --bs="$4" --iodepth="$5" \
    --size="${SIZE_MB}M" --time_based --runtime="$RUNTIME" --ramp_time=1 \
    --output-format=json >"$W/$6-$2.json"
}
fill "$PLAIN"
fill "$TLS"
for r in "${rows[@]}"; do
  set -- $r
  run "$PLAIN" "$1" "$2" "$3" "$4" plain
  run "$TLS" "$1" "$2" "$3" "$4" tls
done

python3 - "$W" "${rows[@]}" <<'PY'
import json, sys
w, rows = sys.argv[1], [r.split()[0] for r in sys.argv[2:]]
def stats(path):
    text = open(path).read()  # fio's nbd engine prints a line before the JSON
    j = json.loads(text[text.index("{"):])["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
    p99 = side["clat_ns"]["percentile"].get("99.000000", 0) / 1000
    return side["iops"], side["bw_bytes"] / 1e6, p99
print(f"{'row':<18} {'plain IOPS':>10} {'MB/s':>8} {'p99 us':>9} | {'TLS IOPS':>10} {'MB/s':>8} {'p99 us':>9} | {'TLS/plain':>9}")
for r in rows:
    p, t = stats(f"{w}/plain-{r}.json"), stats(f"{w}/tls-{r}.json")
    ratio = t[0] / p[0] if p[0] else 0
    print(f"{r:<18} {p[0]:>10.0f} {p[1]:>8.1f} {p[2]:>9.0f} | {t[0]:>10.0f} {t[1]:>8.1f} {t[2]:>9.0f} | {ratio:>9.2f}")
PY
