#!/usr/bin/env bash
# The cookie-less flood against one store: wrk sends visitors that keep no cookie to
# sessiongate (release build, TLS) in front of an app that sets its session cookie on
# every response, so every request starts a session with one vaulted cookie. The
# per-client limit is off (one wrk client would meet it at once): this measures the
# store. Prints new visitors/s, p50/p99, peak RSS and the mean store `create` and
# `sweep` times read from the admin listener's metrics.
#
#   bash benches/load/flood.sh                        # memory store
#   STORE=file bash benches/load/flood.sh             # redb, fsync per new visitor
#   STORE=file DEFER=1 bash benches/load/flood.sh     # redb, defer_anonymous_writes
#   DURATION=20s CONNECTIONS=32 MAX_SESSIONS=50000    # the defaults
# Installs wrk from Debian's packages when missing. Loopback only.
set -euo pipefail

STORE=${STORE:-memory}
DEFER=${DEFER:-0}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
MAX_SESSIONS=${MAX_SESSIONS:-50000}
cd "$(dirname "$0")/../.."

command -v wrk >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
}
cargo build --release --quiet --bin sessiongate --example bench-upstream

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

source benches/ports.sh

up_port=$(free_port); sg_port=$(free_port); admin_port=$(free_port)
./target/release/examples/bench-upstream "$up_port" & pids+=($!)
wait_port "$up_port"

case "$STORE" in
  memory) store="kind = \"memory\"" ;;
  file) store="kind = \"file\"
path = \"$work/sessions.redb\"" ;;
  *) echo "STORE is memory or file" >&2; exit 2 ;;
esac
[ "$DEFER" = 1 ] && store="$store
defer_anonymous_writes = true"

cat > "$work/sessiongate.toml" <<TOML
[server]
listen = "127.0.0.1:$sg_port"
[tls]
self_signed_dev = true
[admin]
listen = "127.0.0.1:$admin_port"
[session]
new_sessions_per_minute = 0
[store]
$store
# A sweep every 5 s (default 30 s): several sweeps of a full store during the flood.
sweep_interval = "5s"
max_sessions = $MAX_SESSIONS
[[routes]]
upstream = "http://127.0.0.1:$up_port"
[routes.session]
vault = ["session"]
TOML
RUST_LOG=error ./target/release/sessiongate --config "$work/sessiongate.toml" & pids+=($!)
sg_pid=${pids[1]}
wait_port "$sg_port"

wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "https://127.0.0.1:$sg_port/" > "$work/wrk.txt" 2>&1
metrics=$(curl -s "http://127.0.0.1:$admin_port/metrics")
mean() { # op
  awk -v op="$1" '
    $0 ~ "store_operation_duration_seconds_sum\\{.*op=\"" op "\"" { s = $2 }
    $0 ~ "store_operation_duration_seconds_count\\{.*op=\"" op "\"" { n = $2 }
    END { if (n > 0) printf "%.2f ms (%d)", s / n * 1000, n; else print "-" }' <<<"$metrics"
}
created=$(awk '/^sessiongate_sessions_created_total/ { s += $2 } END { print s + 0 }' <<<"$metrics")
evicted=$(awk '/^sessiongate_sessions_evicted_total/ { print $2 }' <<<"$metrics")
hwm=$(awk '/^VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$sg_pid/status")
rps=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$work/wrk.txt")
p50=$(awk '$1=="50%" { print $2 }' "$work/wrk.txt")
p99=$(awk '$1=="99%" { print $2 }' "$work/wrk.txt")
grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" >&2 || true

echo "| store | defer | visitors/s | p50 | p99 | mean create | mean sweep | created | evicted | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|"
echo "| $STORE | $DEFER | $rps | $p50 | $p99 | $(mean create) | $(mean sweep) | $created | ${evicted:-0} | $hwm |"
