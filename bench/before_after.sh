#!/usr/bin/env bash
# Serving before/after: this checkout's `greenbelt` against the same binary
# built from an older revision, same bench, same run, interleaved.
#
#   bash bench/before_after.sh 258d805      # ~25 min clean (two release builds) + ~10 min of load
#
# Writes bench/out/before-after/results.json and the section between
# <!-- bench:before-after:begin/end --> of docs/benchmarks.md.
#
# Knobs (environment):
#   BENCH_BASELINE_BIN   use this binary as "before" instead of building REV
#                        (REV is then only the name in the report)
#   BENCH_BASELINE_TARGET  cargo target dir for the baseline build
#                        (default bench/out/baseline-target; point it at a shared
#                        one to reuse compiled dependencies)
#   BENCH_AFTER_BIN      use this binary as "after" instead of this checkout's
#                        release build; BENCH_AFTER_NAME names it in the report
#   BENCH_ROUNDS         rounds of before/after, interleaved (default 2)
#   BENCH_SECTION        the docs section written (default before-after:
#                        <!-- bench:before-after:begin/end -->)
#   BENCH_DURATION, BENCH_WARMUP, BENCH_CONCURRENCY, BENCH_IDLE_PCT,
#   BENCH_IDLE_MAX_WAIT, BENCH_PORT_BASE, BENCH_BUILD, BENCH_DOCS: as in bench/run.sh
#   ORT_DYLIB_PATH       libonnxruntime.so (default: the one in .venv or bench/.venv-mlserver)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[before_after.sh] $*" >&2; }
rev="${1:?usage: bash bench/before_after.sh REV (the git revision to compare against)}"
out="$root/bench/out/before-after"
mkdir -p "$out"

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"
command -v wrk >/dev/null 2>&1 || { say "wrk is not installed (bash bench/run.sh installs it)"; exit 1; }

ort="$(bench_ort "$root")" || exit 1

# ---- the two binaries ---------------------------------------------------
gb="${BENCH_AFTER_BIN:-$root/target/release/greenbelt}"
if [[ -z "${BENCH_AFTER_BIN:-}" ]] && [[ "${BENCH_BUILD:-1}" == 1 || ! -x "$gb" ]]; then
    say "cargo build --release -p greenbelt (this checkout)"
    cargo build --release --quiet -p greenbelt
fi
base="${BENCH_BASELINE_BIN:-}"
if [[ -z "$base" ]]; then
    src="$out/baseline-src"
    target="${BENCH_BASELINE_TARGET:-$root/bench/out/baseline-target}"
    git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
    git worktree add --detach "$src" "$rev" >&2
    say "cargo build --release -p greenbelt at $rev (target $target)"
    (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release --quiet -p greenbelt)
    base="$out/greenbelt-$rev"
    cp "$target/release/greenbelt" "$base"
    git worktree remove --force "$src"
fi
[[ -x "$base" ]] || { say "baseline binary $base is not executable"; exit 1; }

# ---- the model repository both serve (as bench/run.sh writes it) -------
rm -rf "$out/repo"
mkdir -p "$out/repo/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$out/repo/logreg/1/model.onnx"
printf '# written by bench/before_after.sh\nbackend = "onnxruntime"\n' >"$out/repo/logreg/config.toml"

# ---- the run: before and after alternate, each round in the same order --
groups=""
for _ in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    groups+="before,greenbelt,before-nolog,greenbelt-nolog,"
done
knobs=""
for var in $(compgen -e | grep -E '^(BENCH_[A-Z_]+|ORT_DYLIB_PATH)$' | sort); do
    knobs+="$var=$(printf '%q' "${!var}") "
done
status=0
rm -f "$out/results.json"
"$python" "$root/bench/bench.py" \
    --root "$root" --out "$out" --greenbelt "$gb" --ort-lib "$ort" \
    --baseline "$base" --baseline-name "$rev" \
    --after-name "${BENCH_AFTER_NAME:-$(git rev-parse --short=12 HEAD)}" \
    --duration "${BENCH_DURATION:-10}" --warmup "${BENCH_WARMUP:-2}" \
    --concurrency "${BENCH_CONCURRENCY:-1 8 64}" --only "${groups%,}" \
    --idle-pct "${BENCH_IDLE_PCT:-15}" --idle-max-wait "${BENCH_IDLE_MAX_WAIT:-60}" \
    --port-base "${BENCH_PORT_BASE:-18000}" \
    --command "${knobs}bash bench/before_after.sh $rev" || status=$?

if [[ -f "$out/results.json" && "${BENCH_DOCS:-1}" == 1 ]]; then
    "$python" "$root/bench/report.py" --before-after --section "${BENCH_SECTION:-before-after}" \
        "$out/results.json" "$root/docs/benchmarks.md"
fi
exit "$status"
