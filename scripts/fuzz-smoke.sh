#!/usr/bin/env bash
# The fuzz smoke run for CI (stable toolchain, under two minutes once built):
# replays every committed corpus file through its target, runs the
# structured (proptest) cases, and explores each target by mutation for a
# few seconds, every call held to its allocation bound.
#
#   bash scripts/fuzz-smoke.sh                      # CI
#   GREENBELT_FUZZ_SECS=300 bash scripts/fuzz-smoke.sh   # a longer hunt
#
# A panic saves the input under fuzz/artifacts/<target>/ and fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GREENBELT_FUZZ_SECS="${GREENBELT_FUZZ_SECS:-3}"
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
exec cargo test -p greenbelt-fuzz --test it -- --test-threads=1 --nocapture
