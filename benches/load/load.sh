#!/usr/bin/env bash
# Per-core cost: sessiongate against nginx, each pinned to ONE core (taskset), with wrk
# and the upstream pinned to the other, so that neither proxy borrows a core the other
# did not get.
#
# Same load for both: wrk, TLS keep-alive GET, CONNECTIONS connections. Both run one
# worker (sessiongate: worker_threads = 1; nginx: worker_processes 1), keep upstream
# connections alive and harden the upstream's Set-Cookie (nginx: proxy_cookie_flags).
# The upstream re-sets its cookie on every response, as PHP and express-session with
# `rolling` do. Variants, each a fresh process:
#   nginx, no access log           | sessiongate, session route, log level warn
#   nginx, access log to a file    | sessiongate, session route, default access log to a file
#                                  | sessiongate, plain route (no session), warn
# On the session route wrk carries one live sessiongate session whose app cookie is
# vaulted. Each variant runs RUNS times (interleaved); the table gives the median of each
# figure: req/s, p50/p99 latency and the proxy's user and system CPU per request
# (from /proc/PID/stat), and the ratios.
#
# Usage: bash benches/load/load.sh   (DURATION=10s CONNECTIONS=32 RUNS=3 PROXY_CPU=0 LOAD_CPU=1)
# For a before/after comparison of one change: SESSIONGATE_BIN=path/to/old/binary and
# VARIANTS="nginx-log sg-log" (nginx stays the yardstick for the machine's noise).
# Installs wrk, nginx and openssl from Debian's packages when missing. Loopback only.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
RUNS=${RUNS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
cd "$(dirname "$0")/../.."

missing=()
for tool in wrk nginx openssl taskset; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d keeps the package from starting a system nginx on port 80.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq wrk nginx openssl util-linux >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

cargo build --release --quiet --bin sessiongate --example bench-upstream
SESSIONGATE_BIN=${SESSIONGATE_BIN:-./target/release/sessiongate}

work=$(mktemp -d)
up_pid=""
proxy_pids=()
stop_proxy() {
  for p in "${proxy_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${proxy_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  proxy_pids=()
}
cleanup() {
  stop_proxy
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source benches/ports.sh

localhost_cert "$work"

up_port=$(free_port); port=$(free_port)
taskset -c "$LOAD_CPU" ./target/release/examples/bench-upstream "$up_port" & up_pid=$!
wait_port "$up_port"

cat > "$work/sessiongate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
worker_threads = 1
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[upstream]
pool_max_idle_per_host = 256
[[routes]]
name = "plain"
path_prefix = "/plain/"
upstream = "http://127.0.0.1:$up_port"
[[routes]]
name = "session"
upstream = "http://127.0.0.1:$up_port"
[routes.session]
vault = ["session"]
TOML

nginx_conf() { # access_log directive
  mkdir -p "$work/nginx/logs"
  cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  $1
  upstream app { server 127.0.0.1:$up_port; keepalive 256; }
  server {
    listen 127.0.0.1:$port ssl;
    http2 on;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_cookie_flags ~ secure httponly samesite=lax;
    }
  }
}
NGINX
  # Debian 12's nginx 1.22 predates `http2 on;`; fall back to the listen flag.
  if ! nginx -t -c "$work/nginx.conf" -p "$work/nginx" >/dev/null 2>&1; then
    sed -i -e '/http2 on;/d' -e "s/listen 127.0.0.1:$port ssl;/listen 127.0.0.1:$port ssl http2;/" "$work/nginx.conf"
  fi
}

# Starts a variant's proxy on PROXY_CPU; sets proxy_pid (the process doing the work).
start() { # variant
  case "$1" in
    nginx-log|nginx-nolog)
      if [ "$1" = nginx-log ]; then nginx_conf "access_log $work/nginx-access.log;"; else nginx_conf "access_log off;"; fi
      taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf" -p "$work/nginx" & proxy_pids+=($!)
      wait_port "$port"
      proxy_pid=""
      for _ in $(seq 50); do
        proxy_pid=$(pgrep -P "${proxy_pids[0]}" | head -n1) && break
        sleep 0.1
      done
      [ -n "$proxy_pid" ] || { echo "nginx started no worker" >&2; exit 1; }
      ;;
    sg-log)
      # The default: info, which writes one access line per request.
      env -u RUST_LOG taskset -c "$PROXY_CPU" "$SESSIONGATE_BIN" --config "$work/sessiongate.toml" \
        2>>"$work/sg-access.log" & proxy_pids+=($!)
      wait_port "$port"; proxy_pid=${proxy_pids[0]}
      ;;
    sg-nolog|sg-plain)
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$SESSIONGATE_BIN" --config "$work/sessiongate.toml" \
        2>>"$work/sg-warn.log" & proxy_pids+=($!)
      wait_port "$port"; proxy_pid=${proxy_pids[0]}
      ;;
  esac
}

url_of() { # variant
  case "$1" in
    sg-plain) echo "https://localhost:$port/plain/" ;;
    *) echo "https://localhost:$port/" ;;
  esac
}

# The header wrk sends: on the session route, one live session (its app cookie vaulted).
cookie_for() { # variant
  case "$1" in
    sg-log|sg-nolog)
      local id
      id=$(curl -sk -D - -o /dev/null "https://localhost:$port/" | tr -d '\r' \
        | awk -F'[=;]' 'tolower($1) ~ /^set-cookie: __host-sg$/ { print $2 }')
      [ -n "$id" ] || { echo "no sessiongate session was started" >&2; exit 1; }
      echo "Cookie: __Host-sg=$id"
      ;;
    *) echo "X-Bench: 1" ;;
  esac
}

# user and system clock ticks a process has used so far.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

read -r -a variants <<< "${VARIANTS:-nginx-nolog sg-nolog nginx-log sg-log sg-plain}"
declare -A results # "variant run" -> "rps p50_ms p99_ms user_us sys_us"
for run in $(seq "$RUNS"); do
  for v in "${variants[@]}"; do
    start "$v"
    header=$(cookie_for "$v")
    url=$(url_of "$v")
    # Sanity: the proxy forwards and hardens the app's cookie (sessiongate vaults it).
    curl -sk -o /dev/null -w '%{http_code}' -H "$header" "$url" | grep -q 200 \
      || { echo "sanity check failed for $v" >&2; exit 1; }
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s -H "$header" "$url" >/dev/null 2>&1
    read -r u0 s0 < <(ticks "$proxy_pid")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "$header" "$url" > "$work/wrk.txt" 2>&1
    read -r u1 s1 < <(ticks "$proxy_pid")
    if grep -q 'Non-2xx\|Socket errors' "$work/wrk.txt"; then
      grep 'Non-2xx\|Socket errors' "$work/wrk.txt" | sed "s/^/$v: /" >&2
    fi
    results["$v $run"]=$(awk -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$hz" '
      function ms(x) { if (x ~ /us$/) return x / 1000; if (x ~ /ms$/) return x + 0; if (x ~ /s$/) return x * 1000; return x }
      /requests in/ { n = $1 }
      /^Requests\/sec:/ { rps = $2 }
      $1 == "50%" { p50 = ms($2) }
      $1 == "99%" { p99 = ms($2) }
      END { printf "%.0f %.3f %.3f %.2f %.2f", rps, p50, p99, du / hz * 1e6 / n, ds / hz * 1e6 / n }' "$work/wrk.txt")
    echo "run $run $v: ${results["$v $run"]}" >&2
    stop_proxy
  done
done

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# The median over the runs of field F (1 req/s, 2 p50, 3 p99, 4 user, 5 sys) of a variant.
med() { # variant field
  for run in $(seq "$RUNS"); do awk -v f="$2" '{ print $f }' <<<"${results["$1 $run"]}"; done | median
}
# The median over the runs of the per-run ratio a/b of req/s.
ratio() { # a b
  for run in $(seq "$RUNS"); do
    awk -v a="${results["$1 $run"]%% *}" -v b="${results["$2 $run"]%% *}" 'BEGIN { printf "%.3f\n", a / b }'
  done | median
}

echo
echo "Pinned: proxy on CPU $PROXY_CPU, wrk and upstream on CPU $LOAD_CPU; wrk -t1 -c$CONNECTIONS -d$DURATION, TLS keep-alive GET;"
echo "median of $RUNS runs; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nginx -v 2>&1)"
echo
echo "| variant | req/s | p50 | p99 | user CPU/req | sys CPU/req |"
echo "|---|---|---|---|---|---|"
label() {
  case "$1" in
    nginx-nolog) echo "nginx, 1 worker, no access log" ;;
    nginx-log) echo "nginx, 1 worker, access log to a file" ;;
    sg-nolog) echo "sessiongate, 1 worker, session route, log level warn" ;;
    sg-log) echo "sessiongate, 1 worker, session route, access log to a file" ;;
    sg-plain) echo "sessiongate, 1 worker, plain route (no session), warn" ;;
  esac
}
measured() { [[ " ${variants[*]} " == *" $1 "* ]]; }
for v in nginx-nolog sg-nolog sg-plain nginx-log sg-log; do
  measured "$v" || continue
  printf '| %s | %s | %s ms | %s ms | %s us | %s us |\n' "$(label "$v")" "$(med "$v" 1)" \
    "$(med "$v" 2)" "$(med "$v" 3)" "$(med "$v" 4)" "$(med "$v" 5)"
done
echo
echo "sessiongate/nginx req/s (median of the per-run ratios):"
for pair in "sg-log nginx-log access logs on, session route:" "sg-nolog nginx-nolog logs off, session route:      " \
  "sg-plain nginx-nolog logs off, plain route:        "; do
  read -r a b text <<<"$pair"
  measured "$a" && measured "$b" && echo "  $text $(ratio "$a" "$b")"
done
bytes_per_line() { # file pattern
  awk -v b="$(stat -c %s "$1")" -v n="$(grep -c "$2" "$1")" 'BEGIN { printf "%.0f", b / n }'
}
if measured nginx-log && measured sg-log; then
  echo "access log bytes per request: nginx $(bytes_per_line "$work/nginx-access.log" .), sessiongate $(bytes_per_line "$work/sg-access.log" access)"
fi
