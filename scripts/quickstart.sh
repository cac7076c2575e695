#!/usr/bin/env bash
# Quickstart on a fresh machine: build greenbelt, get the ONNX Runtime library
# if it is missing, lay out a demo project with a bundled model, serve it and
# send a first request.
#
#   bash scripts/quickstart.sh            # demo, then stop
#   bash scripts/quickstart.sh --serve    # demo, then keep serving (Ctrl-C to stop)
#
# Extra arguments go to `greenbelt quickstart` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ORT_VERSION=1.32.0
ort_dir=.greenbelt/onnxruntime

say() { printf 'quickstart.sh: %s\n' "$*"; }

command -v cargo >/dev/null || { say "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }

# 1. ONNX Runtime, the production backend. Without it Greenbelt still serves
#    models that the pure-Rust tract backend runs correctly (the demo's is one).
if [[ -n "${ORT_DYLIB_PATH:-}" ]]; then
    say "using ONNX Runtime from ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
elif compgen -G "$ort_dir/libonnxruntime.so*" >/dev/null; then
    say "using ONNX Runtime from $ort_dir"
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
        say "could not download onnxruntime; continuing with the tract backend"
    fi
else
    say "no ONNX Runtime and no pip to fetch it; continuing with the tract backend"
fi

# 2. Build (release). A clean build takes a while on a small machine; see README.
start=$(date +%s)
say "building greenbelt (cargo build --release -p greenbelt)..."
cargo build --release -p greenbelt
say "build took $(( $(date +%s) - start )) s"

# 3. Demo project, serve, first request.
exec target/release/greenbelt --log-format text quickstart "$@"
