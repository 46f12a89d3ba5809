#!/usr/bin/env bash
# Instructions per request (valgrind's callgrind), the figure each optimisation of the
# request path is judged by: unlike wall-clock load tests it repeats to within a fraction
# of a percent on a noisy machine, whatever else runs.
#
# The release binary runs under callgrind behind the same upstream as benches/load/load.sh
# (one Set-Cookie per response). One curl client sends WARMUP requests on one TLS
# keep-alive connection, the counters are zeroed, then REQUESTS more are counted. Prints
# instructions per request for each variant: the session route with a live session whose
# app cookie is vaulted, the plain route, each at log level warn and with the default
# access log. With PROFILE=1 it also prints the top functions (inclusive) of each variant.
# Valgrind hides the CPU's SHA extensions, so SHA-256 (the session ID's store key) runs in
# software here, about 3,400 instructions a hash that a native run on a CPU with SHA-NI
# does not pay: compare counts with each other, not with native profiles.
#
# Usage: bash benches/load/callgrind.sh   (REQUESTS=1000 WARMUP=200 VARIANTS="session plain session-log"
#        SESSIONGATE_BIN=path/to/binary PROFILE=1 KEEP_DIR=dir to keep the callgrind files)
# Installs valgrind and curl from Debian's packages when missing. Loopback only.
set -euo pipefail
REQUESTS=${REQUESTS:-1000}
WARMUP=${WARMUP:-200}
cd "$(dirname "$0")/../.."

missing=()
for tool in valgrind curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${SESSIONGATE_BIN:-}" ]; then
  cargo build --release --quiet --bin sessiongate --example bench-upstream
  SESSIONGATE_BIN=./target/release/sessiongate
else
  cargo build --release --quiet --example bench-upstream
fi

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
up_port=$(free_port)
./target/release/examples/bench-upstream "$up_port" & pids+=($!)
wait_port "$up_port"

# Sends N GETs of URL on one keep-alive connection, with HEADER.
requests() { # n url header
  for _ in $(seq "$1"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$2"; done > "$work/curl.cfg"
  curl -sk --http1.1 -H "$3" -K "$work/curl.cfg"
}

# Counted instructions of the last dump (all threads).
counted() { # out-file prefix
  local f
  f=$(ls -t "$1".* 2>/dev/null | head -n1)
  awk '/^summary:/ { print $2 }' "$f"
}

run() { # variant
  local port url header log out
  port=$(free_port)
  cat > "$work/sg.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
worker_threads = 1
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
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
  case "$1" in session-log|plain-log) log="info" ;; *) log="warn" ;; esac
  case "$1" in plain*) url="https://localhost:$port/plain/" ;; *) url="https://localhost:$port/" ;; esac
  out="$work/cg-$1"
  RUST_LOG=$log valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=yes \
    "$SESSIONGATE_BIN" --config "$work/sg.toml" 2>>"$work/sg-$1.log" & pids+=($!)
  local vg=$!
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  header="X-Bench: 1"
  if [[ $1 == session* ]]; then
    local id
    id=$(curl -sk -D - -o /dev/null "$url" | tr -d '\r' \
      | awk -F'[=;]' 'tolower($1) ~ /^set-cookie: __host-sg$/ { print $2 }')
    [ -n "$id" ] || { echo "no sessiongate session was started" >&2; exit 1; }
    header="Cookie: __Host-sg=$id"
  fi
  requests "$WARMUP" "$url" "$header"
  callgrind_control --zero "$vg" >/dev/null 2>&1
  requests "$REQUESTS" "$url" "$header"
  callgrind_control --dump="measured" "$vg" >/dev/null 2>&1
  local ir
  ir=$(counted "$out")
  printf '%-12s %9.0f instructions per request\n' "$1" "$(awk -v a="$ir" -v n="$REQUESTS" 'BEGIN { print a / n }')"
  if [ "${PROFILE:-0}" = 1 ]; then
    callgrind_annotate --inclusive=yes "$(ls -t "$out".* | head -n1)" 2>/dev/null \
      | sed -n '/^Ir/,$p' | head -n 60
  fi
  if [ -n "${KEEP_DIR:-}" ]; then
    mkdir -p "$KEEP_DIR" && cp "$(ls -t "$out".* | head -n1)" "$KEEP_DIR/callgrind.$1"
  fi
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
}

read -r -a variants <<< "${VARIANTS:-session plain session-log}"
echo "callgrind, $REQUESTS requests after $WARMUP of warm-up, one curl keep-alive client; $SESSIONGATE_BIN"
for v in "${variants[@]}"; do run "$v"; done
