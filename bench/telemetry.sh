#!/usr/bin/env bash
# Serving with all telemetry on (request log + OTLP traces at the default
# sample ratio) vs all off vs the request log alone: one release build, one
# run, the three configurations interleaved.
#
#   bash bench/telemetry.sh        # release build (~20 min clean) + ~8 min of load
#
# Writes bench/out/telemetry/results.json and the section between
# <!-- bench:telemetry:begin/end --> of docs/benchmarks.md.
#
# Knobs (environment): BENCH_BIN (a prebuilt greenbelt instead of this
# checkout's release build), BENCH_ROUNDS (default 2), and BENCH_DURATION,
# BENCH_WARMUP, BENCH_CONCURRENCY, BENCH_IDLE_PCT, BENCH_IDLE_MAX_WAIT,
# BENCH_PORT_BASE, BENCH_BUILD, BENCH_DOCS as in bench/run.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[telemetry.sh] $*" >&2; }
out="$root/bench/out/telemetry"
mkdir -p "$out"

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"
command -v wrk >/dev/null 2>&1 || { say "wrk is not installed (bash bench/run.sh installs it)"; exit 1; }

ort="$(bench_ort "$root")" || exit 1

gb="${BENCH_BIN:-$root/target/release/greenbelt}"
if [[ -z "${BENCH_BIN:-}" ]] && [[ "${BENCH_BUILD:-1}" == 1 || ! -x "$gb" ]]; then
    say "cargo build --release -p greenbelt"
    cargo build --release --quiet -p greenbelt
fi

rm -rf "$out/repo"
mkdir -p "$out/repo/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$out/repo/logreg/1/model.onnx"
printf '# written by bench/telemetry.sh\nbackend = "onnxruntime"\n' >"$out/repo/logreg/config.toml"

groups=""
for _ in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    groups+="greenbelt-nolog,greenbelt-telemetry,greenbelt,"
done
knobs=""
for var in $(compgen -e | grep -E '^(BENCH_[A-Z_]+|ORT_DYLIB_PATH)$' | sort); do
    knobs+="$var=$(printf '%q' "${!var}") "
done
status=0
rm -f "$out/results.json"
"$python" "$root/bench/bench.py" \
    --root "$root" --out "$out" --greenbelt "$gb" --ort-lib "$ort" \
    --duration "${BENCH_DURATION:-10}" --warmup "${BENCH_WARMUP:-2}" \
    --concurrency "${BENCH_CONCURRENCY:-1 8 64}" --only "${groups%,}" \
    --idle-pct "${BENCH_IDLE_PCT:-15}" --idle-max-wait "${BENCH_IDLE_MAX_WAIT:-60}" \
    --port-base "${BENCH_PORT_BASE:-18000}" \
    --command "${knobs}bash bench/telemetry.sh" || status=$?

if [[ -f "$out/results.json" && "${BENCH_DOCS:-1}" == 1 ]]; then
    "$python" "$root/bench/report.py" --telemetry "$out/results.json" "$root/docs/benchmarks.md"
fi
exit "$status"
