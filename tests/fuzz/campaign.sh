#!/usr/bin/env bash
# A fuzzing campaign: every target (or those named) for SECONDS each (default 600),
# one after the other, then the corpus minimised in place. Prints one table row per
# target: executions, seconds, corpus size, coverage, and crashes (written to
# tests/fuzz/artifacts/<target>/; copy each into the corpus once fixed, so that
# `cargo test --test fuzz_corpus` replays it). Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   SECONDS_PER_TARGET=600 tests/fuzz/campaign.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
per=${SECONDS_PER_TARGET:-600}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir tests/fuzz)
fi
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O >&2
logs=target/fuzz-logs
mkdir -p "$logs"
echo "| target | executions | seconds | exec/s | corpus (minimised) | coverage | crashes |"
echo "|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
  corpus=tests/fuzz/corpus/$t
  mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
  start=$(mktemp)
  status=0
  cargo +nightly fuzz run --fuzz-dir tests/fuzz -O "$t" "$corpus" -- \
    -max_total_time="$per" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$logs/$t.log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  secs=$(sed -n 's/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logs/$t.log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$logs/$t.log" | tail -1)
  crashes=$(find "tests/fuzz/artifacts/$t" -type f -newer "$start" | wc -l)
  rm -f "$start"
  [ "$status" -eq 0 ] || echo "$t: the fuzzer stopped with status $status (see $logs/$t.log)" >&2
  cargo +nightly fuzz cmin --fuzz-dir tests/fuzz -O "$t" "$corpus" >"$logs/$t.cmin.log" 2>&1 || true
  size=$(find "$corpus" -type f | wc -l)
  rate=$(( ${runs:-0} / ${secs:-1} ))
  echo "| $t | ${runs:-?} | ${secs:-?} | $rate | $size | ${cov:-?} | $crashes |"
done
