#!/usr/bin/env bash
# The whole test suite: README's second command, and what .ci/run calls.
# Installs whatever the tests need that a fresh machine lacks, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # RSA test key (ring cannot generate RSA)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

cargo test --locked --all-targets --no-fail-fast
