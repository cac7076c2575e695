#!/usr/bin/env bash
# Batch vs real time, one command: the online path with dynamic batching off
# and on (a sweep of max_batch_size x max_queue_delay_us, at several
# concurrencies) and the batch job (`greenbelt score`), on the logreg and
# mlp fixtures; writes throughput-latency plots (docs/efficiency-batching-*.svg)
# and the "Batch vs real time" section of docs/efficiency.md, with the
# recommendation each curve supports.
#
#   bash bench/batching.sh            # release build (~20 min clean), then ~6 min
#
# Knobs (environment):
#   BENCH_BIN          a greenbelt binary built already (skips the build)
#   BENCH_DURATION     measured seconds per step (default 5)
#   BENCH_CONCURRENCY  connections per step (default "1,4,16,64")
#   BENCH_CONFIGS      batching configs: off and SIZExDELAY_US (default "off,8x100,8x1000,64x100,64x1000")
#   BENCH_MODELS       fixtures (default "logreg,mlp")
#   BENCH_ROWS         rows of the batch job (default 500000)
#   BENCH_PORT_BASE    first of two ports (default 18100)
#   BENCH_IDLE_MAX_WAIT  seconds to wait for an idle machine before each step (default 20)
#   BENCH_DOCS         1 (default): rewrite the docs; 0: only bench/out/batching
#   ORT_DYLIB_PATH     libonnxruntime.so (default: the one in .venv; `auto` serves
#                      the mlp's MatMul graph on ONNX Runtime when there is one)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[batching.sh] $*" >&2; }
out="$root/bench/out/batching"
mkdir -p "$out"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"
ort="$(bench_ort "$root" 2>/dev/null || true)"
[[ -n "$ort" ]] || say "no libonnxruntime.so: every model runs on the native engine"

target="${CARGO_TARGET_DIR:-$root/target}"
gb="${BENCH_BIN:-$target/release/greenbelt}"
if [[ -z "${BENCH_BIN:-}" ]]; then
    say "cargo build --release --workspace --bin greenbelt"
    cargo build --release --workspace --quiet --bin greenbelt
fi
# The data generator is an example in the dev profile (see bench/score.sh).
gen="$target/debug/examples/score_bench_data"
if [[ ! -x "$gen" ]]; then
    say "building the data generator (dev profile)"
    cargo build --workspace --quiet --example score_bench_data
fi
rows="${BENCH_ROWS:-500000}"
for f in 20 30; do
    data="$out/in-$rows-$f.parquet"
    [[ -f "$data" ]] || "$gen" "$data" "$rows" "$f" >&2
done

"$python" "$root/bench/batching.py" --greenbelt "$gb" --data-dir "$out" --out "$out" \
    --docs "$root/docs/efficiency.md" --ort-lib "$ort" \
    --models "${BENCH_MODELS:-logreg,mlp}" --configs "${BENCH_CONFIGS:-off,8x100,8x1000,64x100,64x1000}" \
    --concurrency "${BENCH_CONCURRENCY:-1,4,16,64}" --duration "${BENCH_DURATION:-5}" \
    --rows "$rows" --port "${BENCH_PORT_BASE:-18100}" --write-docs "${BENCH_DOCS:-1}"
