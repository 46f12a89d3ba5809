#!/usr/bin/env bash
# The soak: sessiongate (release build, memory store) in front of the test suite's
# vulnerable PHP app for DURATION seconds (default 600) of mixed load: users signing in,
# browsing and out (IDs rotating every 30 s), anonymous visitors, and between
# FLOOD_START and FLOOD_END a wrk flood of cookie-less visitors from random
# X-Forwarded-For addresses (a distributed flood: the per-client limit cannot stop it,
# the session bound must). Prints a row every SAMPLE seconds (RSS, fds, tokio tasks,
# counters) and a verdict: RSS flat within 10% after warm-up, no error answer but 429/503.
#   bash benches/soak/soak.sh            # the README's table
#   DURATION=120 FLOOD_START=40 FLOOD_END=80 bash benches/soak/soak.sh   # a short one
# Needs php-cli and wrk (installed from Debian's packages when missing). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in php wrk; do
  command -v "$tool" >/dev/null || { apt-get install -y -qq php-cli wrk >/dev/null; break; }
done
cargo build --release --quiet
export DURATION=${DURATION:-600} FLOOD_START=${FLOOD_START:-240} FLOOD_END=${FLOOD_END:-360}
work=$(mktemp -d)
pids=()
trap 'kill -- "-${pids[0]}" "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir "$work/php-sessions"
for port in 18080 18443 19090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a previous soak still running?): stop it first" >&2
    exit 1
  fi
done
# Its own process group: PHP's workers are children that outlive a killed parent.
PHP_CLI_SERVER_WORKERS=4 setsid php -S 127.0.0.1:18080 -d session.use_strict_mode=0 \
  -d session.save_path="$work/php-sessions" -d session.gc_maxlifetime=120 \
  tests/apps/php/index.php >"$work/php.log" 2>&1 &
pids+=($!)

cat >"$work/soak.toml" <<TOML
[server]
listen = "127.0.0.1:18443"
[tls]
self_signed_dev = true
[admin]
listen = "127.0.0.1:19090"
[session]
# The users and visitors all come from 127.0.0.1: a limit they stay under. The flood
# comes from random X-Forwarded-For addresses, which no per-client limit can stop.
new_sessions_per_minute = 3000
new_session_burst = 500
anonymous_idle_timeout = "60s"
touch_interval = "20s"
rotate_interval = "30s"
[store]
kind = "memory"
sweep_interval = "10s"
max_sessions = 50000
[[routes]]
name = "php"
upstream = "http://127.0.0.1:18080"
forwarded = "append"
[routes.session]
vault = ["PHPSESSID"]
[[routes.session.login]]
path = "/login"
methods = ["POST"]
success = { status = [302], header = { name = "location", regex = "^/account" } }
failure = { body_contains = "Invalid" }
subject = { form_field = "username" }
[[routes.session.logout]]
path = "/logout"
methods = ["POST"]
TOML
RUST_LOG=warn target/release/sessiongate --config "$work/soak.toml" --log-format json \
  2>"$work/sessiongate.log" &
sg=$!
pids+=($sg)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19090/healthz && break; sleep 0.2; done

cat >"$work/flood.lua" <<'LUA'
request = function()
  local xff = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "." .. math.random(1, 254)
  return wrk.format("GET", "/", { ["Host"] = "localhost", ["X-Forwarded-For"] = xff })
end
LUA
( sleep "$FLOOD_START"
  wrk -t2 -c32 -d"$((FLOOD_END - FLOOD_START))s" -s "$work/flood.lua" https://127.0.0.1:18443/ \
    >"$work/wrk.txt" 2>&1 ) &
pids+=($!)

status=0
echo "sessiongate log so far:" >&2; cat "$work/sessiongate.log" >&2
PROXY=127.0.0.1:18443 ADMIN=127.0.0.1:19090 SG_PID=$sg python3 benches/soak/load.py || status=$?
echo
echo "flood (wrk):"; grep -E "Requests/sec|requests in|Non-2xx" "$work/wrk.txt" || true
echo "sessiongate log lines at warn or above: $(wc -l <"$work/sessiongate.log")"
grep -o '"message":"[^"]*"' "$work/sessiongate.log" | sort | uniq -c | sort -rn | head -5
exit $status
