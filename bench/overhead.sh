#!/usr/bin/env bash
# What one optional part of the serving path costs: Greenbelt with the
# request log on, with and without the part, interleaved in one run.
#
#   bash bench/overhead.sh drift     # the live drift monitor: a reference
#                                    # profile beside the model, 1 s windows
#   bash bench/overhead.sh payload   # the payload log: JSONL, 1% of requests
#
# Release build (~20 min clean) unless BENCH_BIN, then ~4 min of load.
#
# Knobs: BENCH_BIN (a prebuilt greenbelt), BENCH_ROUNDS (default 2),
# BENCH_DURATION, BENCH_WARMUP, BENCH_CONCURRENCY, BENCH_IDLE_PCT,
# BENCH_IDLE_MAX_WAIT, BENCH_PORT_BASE, BENCH_BUILD as in bench/run.sh.
# Writes bench/out/overhead-<part>/results.json and prints the comparison.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[overhead.sh] $*" >&2; }
part="${1:-}"
case "$part" in
    drift|payload) ;;
    *) say "usage: bash bench/overhead.sh drift|payload"; exit 2 ;;
esac
out="$root/bench/out/overhead-$part"
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

rm -rf "$out/repo" "$out/repo-drift"
mkdir -p "$out/repo/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$out/repo/logreg/1/model.onnx"
printf '# written by bench/overhead.sh\nbackend = "onnxruntime"\n' >"$out/repo/logreg/config.toml"

groups=""
for _ in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    groups+="greenbelt,greenbelt-$part,"
done
status=0
rm -f "$out/results.json"
"$python" "$root/bench/bench.py" \
    --root "$root" --out "$out" --greenbelt "$gb" --ort-lib "$ort" \
    --duration "${BENCH_DURATION:-10}" --warmup "${BENCH_WARMUP:-2}" \
    --concurrency "${BENCH_CONCURRENCY:-1 64}" --only "${groups%,}" \
    --idle-pct "${BENCH_IDLE_PCT:-15}" --idle-max-wait "${BENCH_IDLE_MAX_WAIT:-60}" \
    --port-base "${BENCH_PORT_BASE:-18100}" \
    --command "bash bench/overhead.sh $part" || status=$?

"$python" - "$out/results.json" "greenbelt-$part" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
group = sys.argv[2]
runs = [x for x in r["runs"] if x.get("ok") and x["protocol"] == "rest"]
print(f"| concurrency | off req/s | on req/s | change | p99 off ms | p99 on ms | extra µs per request (c=1) |  ({group} vs greenbelt, medians of rounds)")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in sorted({x["concurrency"] for x in runs}):
    off = [x for x in runs if x["group"] == "greenbelt" and x["concurrency"] == c]
    on = [x for x in runs if x["group"] == group and x["concurrency"] == c]
    if not off or not on:
        continue
    m = lambda xs, k: statistics.median(x[k] for x in xs if x.get(k) is not None)
    a, b = m(off, "throughput_rps"), m(on, "throughput_rps")
    extra = f"{(1 / b - 1 / a) * 1e6:.1f}" if c == 1 else ""
    print(f"| {c} | {a:.0f} | {b:.0f} | {100 * (b / a - 1):+.1f}% | {m(off, 'p99_ms'):.2f} | {m(on, 'p99_ms'):.2f} | {extra} |")
PY
exit "$status"
