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

# tests/e2e_stacks.rs: the Flask app runs from its own venv.
venv="$PWD/target/e2e-venv"
if ! "$venv/bin/python" -c 'import flask' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q flask
  "$venv/bin/python" -c 'import flask'
fi
export SESSIONGATE_E2E_PYTHON="$venv/bin/python"
SESSIONGATE_E2E_PHP="$(command -v php)"
export SESSIONGATE_E2E_PHP

cargo test --locked --all-targets --no-fail-fast
