#!/usr/bin/env bash
# The whole test suite: README's second command, and what .ci/run calls.
# Installs whatever the tests need that a fresh machine lacks, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # RSA test key (ring cannot generate RSA)
command -v php >/dev/null 2>&1 || need_apt+=(php-cli)       # tests/e2e_stacks.rs: the PHP app
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)  # the Flask app's venv
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

# tests/e2e_stacks.rs: the Flask app runs from its own venv; tests/deploy_sidecar.rs
# parses deploy/'s YAML with the venv's PyYAML.
venv="$PWD/target/e2e-venv"
if ! "$venv/bin/python" -c 'import flask, yaml' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q flask pyyaml
  "$venv/bin/python" -c 'import flask, yaml'
fi
# The other real stacks of tests/e2e_stacks.rs: Tomcat, Express, Django, Flask-Login.
bash tests/apps/setup.sh "$venv"
export SESSIONGATE_E2E_PYTHON="$venv/bin/python"
SESSIONGATE_E2E_PHP="$(command -v php)"
export SESSIONGATE_E2E_PHP

# The Firestore emulator (Google's, preinstalled with the google-cloud-cli-firestore-emulator
# Debian package) serves the Firestore tests for this whole run; tests that must stop it
# start their own. Never skipped: without it, the run fails here.
jar=$(dpkg -L google-cloud-cli-firestore-emulator 2>/dev/null | grep '/cloud-firestore-emulator.jar$' | head -n1 || true)
jar=${jar:-/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar}
if [ ! -f "$jar" ] || ! command -v java >/dev/null 2>&1; then
  echo "FATAL: the Firestore emulator jar ($jar) or java is missing; install google-cloud-cli-firestore-emulator and a Java 17 runtime" >&2
  exit 1
fi
export SESSIONGATE_FIRESTORE_EMULATOR_JAR="$jar"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
emulator_log="$PWD/target/firestore-emulator.log"
mkdir -p target
java -cp "$jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore start \
  --host=127.0.0.1 --port="$port" >"$emulator_log" 2>&1 &
emulator_pid=$!
trap 'kill "$emulator_pid" 2>/dev/null || true; wait "$emulator_pid" 2>/dev/null || true' EXIT
emulator_ok() {
  python3 -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=1).read().strip() != b"Ok")' "http://127.0.0.1:$port/" 2>/dev/null
}
for _ in $(seq 150); do
  emulator_ok && break
  kill -0 "$emulator_pid" 2>/dev/null || { cat "$emulator_log" >&2; echo "FATAL: the Firestore emulator exited" >&2; exit 1; }
  sleep 0.2
done
emulator_ok || { echo "FATAL: the Firestore emulator did not start" >&2; exit 1; }
export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"

cargo test --locked --all-targets --no-fail-fast
