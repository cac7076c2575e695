#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the Python
# suite that drives `greenbelt serve` with the official tritonclient.
#
#   bash scripts/test.sh
#
# Sets up .venv (tritonclient, onnxruntime, pytest) on first run; the
# onnxruntime wheel also provides the libonnxruntime.so the tests load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

req=tests/python/requirements.txt
if [[ ! -x .venv/bin/python ]] || ! cmp -s "$req" .venv/.requirements.txt; then
    echo "test.sh: creating .venv from $req"
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" .venv/.requirements.txt
fi
ORT_DYLIB_PATH="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH
echo "test.sh: ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

cargo build -p greenbelt
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
.venv/bin/python -m pytest tests/python -q
