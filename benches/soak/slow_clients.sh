#!/usr/bin/env bash
# Slow clients (slowloris): how many connections one replica holds, at what memory, and
# whether a normal client is still served. Two runs against the release binary in front
# of the load bench's upstream, default timeouts (tls_handshake_timeout 10s,
# header_read_timeout 10s, body_idle_timeout 60s):
#   1. under the cap:  SLOW_UNDER slow clients (default 3000), max_connections 10000;
#   2. over the cap:   SLOW_OVER slow clients (default 3000), max_connections 1000.
# See slow_clients.py for what the clients do and what the table shows.
#
# Usage: bash benches/soak/slow_clients.sh     (DURATION=60 per run)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-60}
SLOW_UNDER=${SLOW_UNDER:-3000}
SLOW_OVER=${SLOW_OVER:-3000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bin sessiongate --example bench-upstream

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source benches/ports.sh

localhost_cert "$work"
./target/release/examples/bench-upstream 18081 & pids+=($!)
wait_port 18081

run() { # label max_connections slow
  cat >"$work/sg.toml" <<TOML
[server]
listen = "127.0.0.1:18444"
max_connections = $2
[admin]
listen = "127.0.0.1:19091"
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[[routes]]
upstream = "http://127.0.0.1:18081"
[routes.session]
vault = ["SID"]
TOML
  RUST_LOG=warn ./target/release/sessiongate --config "$work/sg.toml" 2>"$work/sg.log" &
  local sg=$!
  wait_port 18444
  PROXY=127.0.0.1:18444 ADMIN=127.0.0.1:19091 SG_PID=$sg SLOW=$3 DURATION=$DURATION \
    LABEL="$1 (max_connections = $2)" python3 benches/soak/slow_clients.py
  kill "$sg"; wait "$sg" 2>/dev/null || true
  sed -E "s/\x1b\[[0-9;]*m//g" "$work/sg.log" | sed -E "s/^[^ ]+ +//" | cut -c1-160 | sort | uniq -c | sort -rn | head -5
  echo "sessiongate warnings: $(wc -l <"$work/sg.log")"
  echo
}

run "under the cap" 10000 "$SLOW_UNDER"
run "over the cap" 1000 "$SLOW_OVER"
