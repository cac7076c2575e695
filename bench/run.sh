#!/usr/bin/env bash
# Serving benchmark: Greenbelt vs MLServer (and an empty axum handler as the
# ceiling) on this machine, same model, same load generator.
#
#   bash bench/run.sh                       # full run (~6 min), rewrites docs/benchmarks.md
#   BENCH_DURATION=2 BENCH_WARMUP=1 bash bench/run.sh     # quick smoke run
#
# Knobs (environment):
#   BENCH_DURATION     measured seconds per step (default 10)
#   BENCH_WARMUP       wrk warm-up seconds before each REST step (default 2)
#   BENCH_CONCURRENCY  connections per step, space/comma separated (default "1 8 64")
#   BENCH_ONLY         groups to run (default all): greenbelt,greenbelt-nolog,greenbelt-ort,mlserver,mlserver-tuned,empty
#   BENCH_IDLE_PCT     machine busy % under which a step may start (default 15)
#   BENCH_IDLE_MAX_WAIT  seconds to wait for that before measuring anyway (default 60)
#   BENCH_PORT_BASE    first port (default 18000; uses +0,+1 Greenbelt, +80..82 MLServer, +90 empty)
#   BENCH_BUILD        1 (default): `cargo build --release` (a no-op when up to date);
#                      0: use the existing binaries, build only when missing
#   BENCH_DOCS         1 (default): regenerate docs/benchmarks.md; 0: only bench/out/results.json
#   ORT_DYLIB_PATH     libonnxruntime.so for Greenbelt (default: the onnxruntime 1.32.0
#                      wheel installed in bench/.venv-mlserver)
#   PYTHON             interpreter used to create the venv (default python3.11, then python3)
#
# Exit status: 0 when every step ran without errors, 1 otherwise (the report
# is written either way and lists the failures).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bench="$root/bench"
out="$bench/out"
venv="$bench/.venv-mlserver"
req="$bench/requirements-mlserver.txt"

say() { echo "[run.sh] $*" >&2; }

# ---- tools --------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        sudo apt-get install -y wrk >/dev/null
    fi
fi

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"

# ---- MLServer venv (idempotent: reinstalls only when the pins change) ----
ensure_venv "$venv" "$req" "$python"

# ---- ONNX Runtime library for Greenbelt --------------------------------
ort="${ORT_DYLIB_PATH:-}"
if [[ -z "$ort" ]]; then
    ort="$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0 2>/dev/null | head -1 || true)"
fi
[[ -f "$ort" ]] || { say "no libonnxruntime.so found (set ORT_DYLIB_PATH)"; exit 1; }

# ---- binaries -----------------------------------------------------------
target="${CARGO_TARGET_DIR:-$root/target}"
gb="$target/release/greenbelt"
empty="$target/release/examples/empty_server"
# --workspace (not -p): the same feature set as every other build, so the
# dependencies are not rebuilt.
if [[ "${BENCH_BUILD:-1}" == 1 || ! -x "$gb" || ! -x "$empty" ]]; then
    say "cargo build --release --workspace --bins --examples"
    cargo build --release --quiet --workspace --bins --examples
fi

# ---- inputs: a repository with logreg/1 only, MLServer's copy of the model
# repo: the default config (backend = "auto": the native engine runs this
# graph); repo-ort: the same model pinned to ONNX Runtime (a missing
# library fails loudly instead of falling back).
mkdir -p "$out"
rm -rf "$out/repo" "$out/repo-ort"
mkdir -p "$out/repo/logreg/1" "$out/repo-ort/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$out/repo/logreg/1/model.onnx"
cp fixtures/models/logreg/1/model.onnx "$out/repo-ort/logreg/1/model.onnx"
printf '# written by bench/run.sh\nbackend = "onnxruntime"\n' >"$out/repo-ort/logreg/config.toml"
say "training MLServer's copy of logreg/1 (fixtures/datagen.py:train_logreg)"
"$venv/bin/python" "$bench/mlserver_model.py" "$out/mlserver-model" >&2

# ---- the matrix ---------------------------------------------------------
# the exact command, with any BENCH_* knobs, for the report
knobs=""
for var in $(compgen -e | grep -E '^(BENCH_[A-Z_]+|ORT_DYLIB_PATH|PYTHON)$' | sort); do
    knobs+="$var=$(printf '%q' "${!var}") "
done
status=0
rm -f "$out/results.json"
"$python" "$bench/bench.py" \
    --root "$root" --out "$out" \
    --greenbelt "$gb" --empty "$empty" --ml-venv "$venv" --ort-lib "$ort" \
    --duration "${BENCH_DURATION:-10}" --warmup "${BENCH_WARMUP:-2}" \
    --concurrency "${BENCH_CONCURRENCY:-1 8 64}" \
    --only "${BENCH_ONLY:-greenbelt,greenbelt-nolog,greenbelt-ort,mlserver,mlserver-tuned,empty}" \
    --idle-pct "${BENCH_IDLE_PCT:-15}" --idle-max-wait "${BENCH_IDLE_MAX_WAIT:-60}" \
    --port-base "${BENCH_PORT_BASE:-18000}" \
    --command "${knobs}bash bench/run.sh" || status=$?

if [[ -f "$out/results.json" && "${BENCH_DOCS:-1}" == 1 ]]; then
    "$python" "$bench/report.py" "$out/results.json" "$root/docs/benchmarks.md"
fi
exit "$status"
