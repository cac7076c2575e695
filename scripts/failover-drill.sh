#!/usr/bin/env bash
# The multi-region failover drill: `greenbelt drill failover` creates two
# regions on this machine (its own PostgreSQL primary + streaming hot
# standby from /usr/lib/postgresql/15/bin, Redis primary + replica, a
# `greenbelt serve` each, HAProxy in front), takes region A down under
# load, promotes B, measures detection, RTO, RPO and failed requests, and
# fails back. Prints the measured report; fails if the drill does or an
# objective is missed.
#
#   bash scripts/failover-drill.sh
#   bash scripts/failover-drill.sh --json
#   GREENBELT_PG_BIN=/usr/lib/postgresql/16/bin bash scripts/failover-drill.sh --rto 5s
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bin=${GREENBELT_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/greenbelt}
[[ -x $bin ]] || cargo build -p greenbelt
if [[ -z "${ORT_DYLIB_PATH:-}" ]] && ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
    ORT_DYLIB_PATH="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
    export ORT_DYLIB_PATH
fi

echo "== drill failover"
# Objectives: the first prediction from region B within 10 s of the
# failure; no acknowledged write older than 1 s before it lost.
"$bin" drill failover --model "$root/fixtures/models/logreg/1/model.onnx" --rto 10s --rpo 1s "$@"
