#!/usr/bin/env bash
# Quickstart on a fresh machine: build greenbelt, lay out a demo project with
# a bundled model, serve it and send a first request. The demo's models (a
# logistic regression and gradient-boosted trees) run on Greenbelt's native
# engine, so ONNX Runtime is not needed; it is fetched only on request.
#
#   bash scripts/quickstart.sh            # demo, then stop
#   bash scripts/quickstart.sh --serve    # demo, then keep serving (Ctrl-C to stop)
#   QUICKSTART_ONNXRUNTIME=1 bash scripts/quickstart.sh   # also fetch ONNX Runtime (for neural graphs)
#
# Extra arguments go to `greenbelt quickstart` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ORT_VERSION=1.32.0
ort_dir=.greenbelt/onnxruntime

say() { printf 'quickstart.sh: %s\n' "$*"; }

command -v cargo >/dev/null || { say "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }

# 1. ONNX Runtime, the backend for graphs the native engine does not run
#    (neural networks). Tabular models (the demo's) do not need it.
if [[ -n "${ORT_DYLIB_PATH:-}" ]]; then
    say "using ONNX Runtime from ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
elif compgen -G "$ort_dir/libonnxruntime.so*" >/dev/null; then
    say "using ONNX Runtime from $ort_dir"
elif [[ "${QUICKSTART_ONNXRUNTIME:-0}" != 1 ]]; then
    say "not fetching ONNX Runtime: the demo's models run on the native engine (QUICKSTART_ONNXRUNTIME=1 fetches it)"
elif command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    say "ONNX Runtime not found: downloading the onnxruntime==$ORT_VERSION wheel from PyPI into $ort_dir"
    mkdir -p .greenbelt/wheels "$ort_dir"
    if python3 -m pip download --quiet --no-deps --only-binary=:all: \
        -d .greenbelt/wheels "onnxruntime==$ORT_VERSION"; then
        python3 - "$ort_dir" <<'PY'
import glob, os, sys, zipfile
dest = sys.argv[1]
wheel = sorted(glob.glob(".greenbelt/wheels/onnxruntime-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base.startswith("libonnxruntime.so"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
            print(f"quickstart.sh: extracted {base} from {os.path.basename(wheel)}")
PY
    else
        say "could not download onnxruntime; continuing with the native engine and tract"
    fi
else
    say "no ONNX Runtime and no pip to fetch it; continuing with the native engine and tract"
fi

# 2. Build: the `quickstart` profile (Cargo.toml) optimizes Greenbelt and
#    the request path fully and the rest (DataFusion, sqlx, ...) at
#    opt-level 1: 17.7 minutes from an empty target directory on 2 cores,
#    against 25.1 for --release (docs/benchmarks.md, Build).
#    QUICKSTART_PROFILE=release builds the production profile instead.
profile=${QUICKSTART_PROFILE:-quickstart}
start=$(date +%s)
say "building greenbelt (cargo build --profile $profile -p greenbelt)..."
cargo build --profile "$profile" -p greenbelt
say "build took $(( $(date +%s) - start )) s"

# 3. Demo project, serve, first request.
exec "${CARGO_TARGET_DIR:-target}/$profile/greenbelt" --log-format text quickstart "$@"
