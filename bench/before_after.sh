#!/usr/bin/env bash
# Serving throughput and p99 of two Greenbelt binaries, measured in one run
# with the same bench (bench/bench.py: wrk for REST, `greenbelt bench` for
# gRPC, c = 1, 8, 64), one server at a time, written side by side into
# docs/benchmarks.md (section "Before/after").
#
#   bash bench/before_after.sh BEFORE_BIN AFTER_BIN [BEFORE_LABEL AFTER_LABEL]
#
# Build each binary with `cargo build --release -p greenbelt` at the commit
# you want (e.g. in a `git worktree`). BENCH_DURATION / BENCH_WARMUP /
# BENCH_ROUNDS (default 2: before, after, before, after) as in bench/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bench=$root/bench
out=$root/bench/out/before-after
before_bin=$(realpath "$1")
after_bin=$(realpath "$2")
before_label=${3:-before}
after_label=${4:-after}
say() { echo "before_after: $*" >&2; }
# shellcheck source=bench/lib.sh
source "$bench/lib.sh"
python=$(bench_python)
ort="${ORT_DYLIB_PATH:-$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)}"
[[ -f "$ort" ]] || { echo "no libonnxruntime.so (set ORT_DYLIB_PATH or run scripts/test.sh once)" >&2; exit 1; }
mkdir -p "$out/repo/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$out/repo/logreg/1/model.onnx"
printf 'backend = "onnxruntime"\n' >"$out/repo/logreg/config.toml"
rounds=${BENCH_ROUNDS:-2}
for round in $(seq 1 "$rounds"); do
    for side in before after; do
        bin=$before_bin; [[ $side == after ]] && bin=$after_bin
        dir="$out/$side-$round"
        mkdir -p "$dir"
        rm -rf "$dir/repo" && cp -r "$out/repo" "$dir/repo"
        say "round $round, $side ($bin)"
        "$python" "$bench/bench.py" --root "$root" --out "$dir" \
            --greenbelt "$bin" --empty /bin/true --ml-venv /nonexistent --ort-lib "$ort" \
            --duration "${BENCH_DURATION:-10}" --warmup "${BENCH_WARMUP:-2}" \
            --concurrency "1 8 64" --only greenbelt,greenbelt-nolog \
            --idle-pct "${BENCH_IDLE_PCT:-15}" --idle-max-wait "${BENCH_IDLE_MAX_WAIT:-60}" \
            --port-base "${BENCH_PORT_BASE:-18000}" --command "bash bench/before_after.sh"
    done
done
"$python" "$bench/before_after.py" "$out" "$rounds" "$before_label" "$after_label" "$root/docs/benchmarks.md"
