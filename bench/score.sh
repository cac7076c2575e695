#!/usr/bin/env bash
# Batch-scoring throughput of `greenbelt score` on this machine: ROWS rows x
# 20 Float64 features through the logreg and forest fixtures, Parquet in and
# out (native engine, then ONNX Runtime; with the 21 input columns passed
# through, then without), and CSV in (native). Prints a
# Markdown table (rows/s, seconds, peak RSS) for docs/efficiency.md.
#
#   bash bench/score.sh
#
# Knobs (environment):
#   SCORE_BENCH_ROWS      rows (default 1000000)
#   SCORE_BENCH_THREADS   --threads (default: the number of CPUs)
#   SCORE_BENCH_PROFILE   release (default) or debug
#   SCORE_BENCH_BIN       a greenbelt binary built already (skips building it)
#   CARGO_TARGET_DIR      where cargo builds (default target/)
#   ORT_DYLIB_PATH        libonnxruntime.so for the onnxruntime rows (else
#                         the one in .venv; those rows are skipped without one)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rows="${SCORE_BENCH_ROWS:-1000000}"
threads="${SCORE_BENCH_THREADS:-$(nproc)}"
profile="${SCORE_BENCH_PROFILE:-release}"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$root/bench/out/score"
mkdir -p "$out"

say() { echo "[score.sh] $*" >&2; }

# --workspace keeps the features the workspace build unifies (no rebuild of
# the dependencies with other features). The data generator is an example,
# and examples bring the dev-dependencies' features (tokio's test-util):
# it is built in the dev profile, where the tests built them already, so
# the release build of greenbelt stays the one `cargo build --release` makes.
flag=()
[[ "$profile" == release ]] && flag=(--release)
bin="${SCORE_BENCH_BIN:-$target/$profile/greenbelt}"
if [[ -z "${SCORE_BENCH_BIN:-}" ]]; then
    say "building greenbelt ($profile)"
    cargo build --workspace "${flag[@]}" --bin greenbelt >&2
fi
say "building the data generator (dev profile)"
cargo build --workspace --example score_bench_data >&2
gen="$target/debug/examples/score_bench_data"

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1 || true)"
    export ORT_DYLIB_PATH
fi

for ext in parquet csv; do
    data="$out/in-$rows.$ext"
    [[ -f "$data" ]] || "$gen" "$data" "$rows" 20 >&2
done
columns="$(seq -s, -f 'f%g' 0 19)"

echo "| model | backend | input | output | rows | seconds | rows/s | peak RSS (MiB) |"
echo "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"
run() {
    local model="$1" backend="$2" ext="$3" pass="${4:-}" json rss
    if [[ "$backend" == onnxruntime && -z "${ORT_DYLIB_PATH:-}" ]]; then
        say "no ONNX Runtime library: skipping $model on onnxruntime"
        return
    fi
    rm -f "$out/out-$model.parquet"
    json="$( { /usr/bin/time -f 'RSS_KIB %M' "$bin" score --model-file "fixtures/models/$model/1/model.onnx" \
        --input "$out/in-$rows.$ext" --output "$out/out-$model.parquet" --columns "$columns" \
        --backend "$backend" --threads "$threads" ${pass:+"$pass"} --json; } 2>"$out/stderr.txt")"
    rss="$(sed -n 's/^RSS_KIB //p' "$out/stderr.txt")"
    python3 - "$model" "$backend" "$ext" "$rss" "$json" "$pass" <<'PY'
import json, sys
model, backend, ext, rss, summary, passthrough = sys.argv[1:7]
s = json.loads(summary)
output = "outputs only" if passthrough else "inputs + outputs"
print(f"| {model} | {s['backend']} | {ext} | {output} | {s['rows']:,} | {s['seconds']:.2f} | {s['rows_per_second']:,.0f} | {int(rss) / 1024:.0f} |")
PY
}
for model in logreg forest; do
    run "$model" native parquet
    run "$model" onnxruntime parquet
    run "$model" native parquet --no-passthrough
    run "$model" onnxruntime parquet --no-passthrough
    run "$model" native csv
done
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), --threads $threads, $profile build"
