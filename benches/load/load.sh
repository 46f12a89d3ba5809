#!/usr/bin/env bash
# Load comparison: the upstream alone, sessiongate in front of it, nginx in front of it.
#
# Same load for all three: wrk, keep-alive GET, TLS for the two proxies (plain HTTP for
# the upstream alone). Both proxies run ONE worker (sessiongate: worker_threads = 1;
# nginx: worker_processes 1), forward with upstream keep-alive, harden the upstream's
# Set-Cookie (nginx: proxy_cookie_flags ~ secure httponly samesite=lax) and log only
# warnings (no access log for either). Prints req/s and p50/p99 latency per target and
# the sessiongate/nginx ratio.
#
# Usage: bash benches/load/load.sh        (DURATION=20s CONNECTIONS=64 WRK_THREADS=1 to change)
# Installs wrk, nginx and openssl from Debian's packages when missing. Loopback only.
set -euo pipefail

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
cd "$(dirname "$0")/../.."

missing=()
for tool in wrk nginx openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d keeps the package from starting a system nginx on port 80.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

cargo build --release --quiet --bin sessiongate --example bench-upstream

work=$(mktemp -d)
pids=()
cleanup() {
  [ -n "${KEEP:-}" ] && return
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; exit 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

up_port=$(free_port); sg_port=$(free_port); nx_port=$(free_port)

./target/release/examples/bench-upstream "$up_port" & pids+=($!)
wait_port "$up_port"

cat > "$work/sessiongate.toml" <<TOML
[server]
listen = "127.0.0.1:$sg_port"
worker_threads = 1
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[upstream]
pool_max_idle_per_host = 256
[[routes]]
upstream = "http://127.0.0.1:$up_port"
TOML
RUST_LOG=warn ./target/release/sessiongate --config "$work/sessiongate.toml" & pids+=($!)
wait_port "$sg_port"

mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$up_port; keepalive 256; }
  server {
    listen 127.0.0.1:$nx_port ssl;
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
  sed -i -e '/http2 on;/d' -e "s/listen 127.0.0.1:$nx_port ssl;/listen 127.0.0.1:$nx_port ssl http2;/" "$work/nginx.conf"
fi
nginx -c "$work/nginx.conf" -p "$work/nginx" & pids+=($!)
wait_port "$nx_port"

# Sanity: both proxies forward and harden the cookie.
for url in "https://localhost:$sg_port/" "https://localhost:$nx_port/"; do
  curl -sk -D - -o /dev/null "$url" | grep -qi 'set-cookie:.*httponly' \
    || { echo "sanity check failed for $url" >&2; exit 1; }
done

# CPU time (user+sys clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
sg_pid=${pids[1]}
nx_pid=$(pgrep -f "nginx: worker process" | head -n1)

declare -A rps p50 p99 cpu
run() { # name url [pid whose CPU per request to report]
  local out before=0 reqs
  [ -n "${3:-}" ] && before=$(ticks "$3")
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2" > "$work/$1.txt" 2>&1
  out=$(cat "$work/$1.txt")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu[$1]="-"
  [ -n "${3:-}" ] && cpu[$1]=$(awk -v t=$(( $(ticks "$3") - before )) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  rps[$1]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50[$1]=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99[$1]=$(awk '$1=="99%" {print $2}' <<<"$out")
  if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then grep 'Non-2xx\|Socket errors' <<<"$out" | sed "s/^/$1: /" >&2; fi
}
run upstream "http://127.0.0.1:$up_port/"
run sessiongate "https://localhost:$sg_port/" "$sg_pid"
run nginx "https://localhost:$nx_port/" "$nx_pid"

echo
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, keep-alive GET; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
row() { printf '| %-28s | %10s | %8s | %8s | %14s |\n' "$@"; }
row target req/s p50 p99 "proxy CPU/req"
printf '|%s|%s|%s|%s|%s|\n' ------------------------------ ------------ ---------- ---------- ----------------
row "upstream alone (plain HTTP)" "${rps[upstream]}" "${p50[upstream]}" "${p99[upstream]}" "-"
row "sessiongate, 1 thread, TLS" "${rps[sessiongate]}" "${p50[sessiongate]}" "${p99[sessiongate]}" "${cpu[sessiongate]} us"
row "nginx, 1 worker, TLS" "${rps[nginx]}" "${p50[nginx]}" "${p99[nginx]}" "${cpu[nginx]} us"
awk -v s="${rps[sessiongate]}" -v n="${rps[nginx]}" 'BEGIN { printf "sessiongate/nginx req/s ratio: %.2f\n", s / n }'
